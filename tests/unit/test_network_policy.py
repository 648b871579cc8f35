"""spec.networkPolicy: admitted or refused by the CRD (schema and CEL), parsed by the operator's own
guard naming the field, and the NetworkPolicy it builds, evaluated on connections."""

from __future__ import annotations

from typing import Any

import pytest
from test_crd_and_builders import SCHEMA, _defaulted, _minimal, admit

from chaos_lab.netpolicy import Endpoint, allows
from chaos_operator.domain.builders import JOB_LABEL, PEER_PORT
from chaos_operator.domain.security import build_network_policy, network_policy_warnings
from chaos_operator.domain.spec import SpecError, parse_job

PROMETHEUS = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {
        "matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "In", "values": ["prometheus"]}]
    },
}


def _job(**spec: Any):
    body = _defaulted(SCHEMA, _minimal(**spec))
    body["metadata"] |= {"namespace": "ml", "uid": "u-1"}
    return parse_job(body)


@pytest.mark.parametrize(
    "policy",
    [
        {},
        {"enabled": False},
        {"federationCIDRs": ["198.51.100.0/28", "2001:db8::/64"], "metrics": PROMETHEUS},
        {"egressCIDRs": ["10.96.0.1/32"], "metrics": {"podSelector": {}}},
    ],
)
def test_good_switches_and_selectors_are_admitted_and_parsed(policy: dict) -> None:
    assert admit(_minimal(networkPolicy=policy)) == []
    _job(networkPolicy=policy)


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ({"enabled": "yes"}, "enabled"),
        ({"enabled": 1}, "enabled"),
        ({"federationCIDRs": ["partner.example.org"]}, "federationCIDRs"),
        ({"federationCIDRs": ["10.0.0.0/33"]}, "federationCIDRs"),
        ({"federationCIDRs": "10.0.0.0/8"}, "federationCIDRs"),
        ({"egressCIDRs": ["300.1.1.1/32"]}, "egressCIDRs"),
        ({"metrics": {"podSelector": {"matchLabels": {"app": "has space"}}}}, "matchLabels"),
        ({"metrics": {"podSelector": {"matchLabels": {"bad key!": "x"}}}}, "matchLabels"),
        ({"metrics": {"namespaceSelector": {"matchLabels": {"team": 5}}}}, "matchLabels"),
        ({"metrics": {"podSelector": {"matchExpressions": [{"key": "app", "operator": "Is"}]}}}, "operator"),
        ({"metrics": {"podSelector": {"matchExpressions": [{"key": "app", "operator": "In"}]}}}, "values"),
        (
            {
                "metrics": {
                    "podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}
                }
            },
            "values",
        ),
    ],
)
def test_bad_switches_and_selectors_are_refused_by_the_crd_and_the_parser(
    policy: dict, expected: str
) -> None:
    errors = admit(_minimal(networkPolicy=policy))
    assert errors and any(expected in e for e in errors), errors
    with pytest.raises(SpecError, match=expected) as caught:
        parse_job(_minimal(networkPolicy=policy) | {"metadata": {"name": "j", "namespace": "ml"}})
    assert caught.value.field.startswith("networkPolicy")


def test_the_policy_is_on_by_default_and_owned_by_the_job() -> None:
    policy = build_network_policy(_job())
    assert policy["kind"] == "NetworkPolicy" and policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert policy["spec"]["podSelector"] == {"matchLabels": {JOB_LABEL: "mnist-minimal"}}
    assert policy["spec"]["policyTypes"] == ["Ingress"] and "egress" not in policy["spec"]
    assert build_network_policy(_job(networkPolicy={"enabled": False})) is None


MEMBER = Endpoint("10.0.0.5", {JOB_LABEL: "mnist-minimal"}, {"kubernetes.io/metadata.name": "ml"})
OTHER_JOB = Endpoint("10.0.0.6", {JOB_LABEL: "other"}, {"kubernetes.io/metadata.name": "ml"})
STRANGER = Endpoint("10.0.1.9", {"app": "web"}, {"kubernetes.io/metadata.name": "ml"})
SAME_LABEL_ELSEWHERE = Endpoint(
    "10.0.2.9", {JOB_LABEL: "mnist-minimal"}, {"kubernetes.io/metadata.name": "x"}
)
PROM = Endpoint(
    "10.0.3.3", {"app.kubernetes.io/name": "prometheus"}, {"kubernetes.io/metadata.name": "monitoring"}
)
PROM_ELSEWHERE = Endpoint(
    "10.0.4.4", {"app.kubernetes.io/name": "prometheus"}, {"kubernetes.io/metadata.name": "ml"}
)
PARTNER = Endpoint("198.51.100.7", None, None)  # outside the cluster: an address only
INTERNET = Endpoint("203.0.113.50", None, None)
COLLECTIVE_PORT = 41234  # an ephemeral port (gloo pairs, the rendezvous store)


def test_who_may_connect_to_which_port() -> None:
    job = _job(
        networkPolicy={"federationCIDRs": ["198.51.100.0/28"], "metrics": PROMETHEUS},
        federation={"peers": ["partner-0=https://192.0.2.10:7070"]},
    )
    policy = build_network_policy(job)
    table = {
        (src, port): allows(policy, "ml", src, port)
        for src in (
            MEMBER,
            OTHER_JOB,
            STRANGER,
            SAME_LABEL_ELSEWHERE,
            PROM,
            PROM_ELSEWHERE,
            PARTNER,
            INTERNET,
        )
        for port in (PEER_PORT, COLLECTIVE_PORT)
    }
    allowed = {(src.ip, port) for (src, port), ok in table.items() if ok}
    assert allowed == {
        (MEMBER.ip, PEER_PORT), (MEMBER.ip, COLLECTIVE_PORT),  # the job's own pods: every port
        (PARTNER.ip, PEER_PORT), (PARTNER.ip, COLLECTIVE_PORT),  # federation: every port
        (PROM.ip, PEER_PORT),  # Prometheus: /metrics on the peer port only
    }  # fmt: skip
    peer_by_ip = Endpoint("192.0.2.10", None, None)  # a peer named by address needs no CIDR
    assert allows(policy, "ml", peer_by_ip, COLLECTIVE_PORT)


def test_egress_is_left_alone_unless_configured() -> None:
    policy = build_network_policy(_job(networkPolicy={"egressCIDRs": ["10.96.0.1/32"]}))
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    targets = [peer for rule in policy["spec"]["egress"] for peer in rule.get("to", [])]
    assert {"ipBlock": {"cidr": "10.96.0.1/32"}} in targets
    assert {"podSelector": {"matchLabels": {JOB_LABEL: "mnist-minimal"}}} in targets
    assert any(
        p == {"protocol": "UDP", "port": 53}
        for rule in policy["spec"]["egress"]
        for p in rule.get("ports", [])
    )


def test_peers_named_by_host_name_get_a_warning_until_cidrs_are_declared() -> None:
    federation = {"peers": ["partner-0=https://trainer-0.partner.example.org:7070"]}
    assert "federationCIDRs" in network_policy_warnings(_job(federation=federation))[0]
    assert (
        network_policy_warnings(
            _job(federation=federation, networkPolicy={"federationCIDRs": ["198.51.100.0/28"]})
        )
        == []
    )
    assert network_policy_warnings(_job(federation=federation, networkPolicy={"enabled": False})) == []


def test_the_evaluator_can_fail() -> None:
    """A policy that admits everyone is seen to admit the stranger (the table above is not vacuous)."""
    policy = build_network_policy(_job())
    policy["spec"]["ingress"].append({})
    assert allows(policy, "ml", STRANGER, COLLECTIVE_PORT)
    policy["spec"]["ingress"] = []
    assert not allows(policy, "ml", MEMBER, PEER_PORT)
