"""``spec.federation.party`` and ``spec.federation.expose``: the CRD and the parser refuse bad
fields naming them; the pods get the party's key and policy, per-pod Services of the chosen
type, and advertise the address other sites reach them at."""

from __future__ import annotations

from typing import Any

import pytest
from test_crd_and_builders import _job, _minimal, admit, assert_refused

from chaos_operator.domain.builders import (
    INDEX_LABEL,
    JOB_LABEL,
    AddressPending,
    advertise_url,
    build_pod,
    build_pod_service,
)
from chaos_operator.domain.security import SECRET_FILE_MODE, build_network_policy, network_policy_warnings
from chaos_sidecar import trainer_env
from chaos_sidecar.pod_contract import PARTY_KEY_FILE, PARTY_MOUNT, POLICY_FILE, POLICY_MOUNT

PARTY = {"keySecretRef": {"name": "uni-a-party"}, "policyConfigMapRef": {"name": "shared-policy"}}
_P, P, E = PARTY, "federation.party", "federation.expose"
NODE_PORT = {"type": "NodePort"}


def _federation(**federation: Any):
    return _job(federation=federation)


@pytest.mark.parametrize(
    ("federation", "field"),
    [
        ({"party": "uni-a"}, P),
        ({"party": {"policyConfigMapRef": {"name": "p"}}}, P + ".keySecretRef"),
        ({"party": {"keySecretRef": {"name": "k"}}}, P + ".policyConfigMapRef"),
        ({"party": _P | {"keySecretRef": {"name": "Uni_A"}}}, P + ".keySecretRef.name"),
        ({"party": _P | {"keySecretRef": {"name": "k", "key": "a/b"}}}, P + ".keySecretRef.key"),
        ({"party": _P | {"keySecretRef": {"name": "k", "key": ".."}}}, P + ".keySecretRef.key"),
        ({"party": _P | {"policyConfigMapRef": {"name": "x" * 254}}}, P + ".policyConfigMapRef.name"),
        ({"party": _P | {"policyConfigMapRef": {"name": "p", "key": ""}}}, P + ".policyConfigMapRef.key"),
        ({"party": _P | {"allowCleartextCollectives": "yes"}}, P + ".allowCleartextCollectives"),
        ({"party": _P | {"keyFile": "/k"}}, P + ".keyFile"),
        ({"expose": {"type": "ExternalName"}}, E + ".type"),
        ({"expose": NODE_PORT | {"advertise": "http://{pod}.x:{nodePort}"}}, E + ".advertise"),
        ({"expose": NODE_PORT | {"advertise": "http://{address}:{port}"}}, E + ".advertise"),
        ({"expose": {"advertise": "tcp://{podIP}:{port}"}}, E + ".advertise"),
        ({"expose": {"advertise": "http://{pod}.x:{port}/path"}}, E + ".advertise"),
        ({"expose": {"advertise": "http://a,b:7070"}}, E + ".advertise"),
        ({"expose": {"type": "NodePort", "ports": [30000]}}, E + ".ports"),
    ],
)  # fmt: skip
def test_the_parser_refuses_bad_party_and_expose_fields_naming_them(federation: dict, field: str) -> None:
    assert_refused(field, federation=federation)


@pytest.mark.parametrize(
    ("federation", "expected"),
    [
        ({"party": {"keySecretRef": {"name": "k"}}}, "policyConfigMapRef"),
        ({"party": PARTY | {"keySecretRef": {"name": "Uni_A"}}}, "keySecretRef.name"),
        ({"party": PARTY | {"policyConfigMapRef": {"name": "p", "key": "a/b"}}}, "policyConfigMapRef.key"),
        ({"expose": {"type": "ExternalName"}}, "expose.type"),
        ({"expose": {"advertise": "http://{pod}.x:{port}/path"}}, "expose.advertise"),
        ({"expose": NODE_PORT | {"advertise": "http://{address}:{port}"}}, "needs type LoadBalancer"),
    ],
)  # fmt: skip
def test_the_crd_refuses_bad_party_and_expose_fields(federation: dict, expected: str) -> None:
    errors = admit(_minimal(federation=federation))
    assert any(expected in e for e in errors), errors


def test_the_crd_admits_party_and_each_expose_type() -> None:
    for kind in ("ClusterIP", "NodePort", "LoadBalancer"):
        assert admit(_minimal(federation={"party": PARTY, "expose": {"type": kind}})) == []
    lb = {"type": "LoadBalancer", "advertise": "https://{address}:{port}"}
    assert admit(_minimal(federation={"expose": lb})) == []


def test_a_party_pod_mounts_the_key_and_policy_read_only_in_the_sidecar_alone() -> None:
    job = _federation(party=PARTY | {"keySecretRef": {"name": "uni-a-party", "key": "uni-a.key"}})
    assert job.party is not None and job.party.policy_configmap_key == "policy.yaml"  # the default key
    pod = build_pod(job, 1)
    trainer, sidecar = pod["spec"]["containers"]
    args = sidecar["args"]
    assert args[args.index("--party-key") + 1] == PARTY_KEY_FILE
    assert args[args.index("--admission-policy") + 1] == POLICY_FILE
    assert "--allow-cleartext-collectives" not in args
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    key, policy = mounts[PARTY_MOUNT], mounts[POLICY_MOUNT]
    assert key["readOnly"] is True and policy["readOnly"] is True
    secret = volumes[key["name"]]["secret"]
    assert secret["secretName"] == "uni-a-party" and secret["defaultMode"] == SECRET_FILE_MODE == 0o440
    assert secret["items"] == [{"key": "uni-a.key", "path": PARTY_KEY_FILE.rsplit("/", 1)[1]}]
    config_map = volumes[policy["name"]]["configMap"]
    assert config_map["name"] == "shared-policy"
    assert config_map["items"] == [{"key": "policy.yaml", "path": POLICY_FILE.rsplit("/", 1)[1]}]
    assert not {key["name"], policy["name"]} & {m["name"] for m in trainer["volumeMounts"]}
    allowed = build_pod(_federation(party=PARTY | {"allowCleartextCollectives": True}), 0)
    assert "--allow-cleartext-collectives" in allowed["spec"]["containers"][1]["args"]
    plain = build_pod(_job(), 0)["spec"]["containers"][1]["args"]
    assert "--party-key" not in plain and "--admission-policy" not in plain


def test_cluster_ip_builds_no_service_and_advertises_the_pod_ip_as_before() -> None:
    job = _federation(expose={"type": "ClusterIP"})
    assert build_pod_service(job, 0) is None
    sidecar = build_pod(job, 0)["spec"]["containers"][1]
    assert sidecar["args"][sidecar["args"].index("--advertise") + 1] == "http://$(CHAOS_POD_IP):7070"
    trainer = build_pod(job, 0)["spec"]["containers"][0]
    assert trainer_env.ADDRESS not in {e["name"] for e in trainer["env"]}


@pytest.mark.parametrize("kind", ["NodePort", "LoadBalancer"])
def test_each_pod_gets_its_own_service_of_the_chosen_type_owned_by_the_job(kind: str) -> None:
    job = _federation(expose={"type": kind})
    services = [build_pod_service(job, i) for i in range(3)]
    assert [s["metadata"]["name"] for s in services] == [
        "mnist-minimal-0",
        "mnist-minimal-1",
        "mnist-minimal-2",
    ]
    for index, service in enumerate(services):
        assert service["spec"]["type"] == kind
        # it selects exactly the pod of its index: the labels build_pod sets
        assert service["spec"]["selector"] == {JOB_LABEL: "mnist-minimal", INDEX_LABEL: str(index)}
        pod_labels = build_pod(job, index, advertise="http://x:1")["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert service["spec"]["ports"] == [
            {"name": "peer", "protocol": "TCP", "port": 7070, "targetPort": 7070}
        ]
        assert service["spec"]["externalTrafficPolicy"] == "Local"  # the client's address is kept
        assert service["spec"]["publishNotReadyAddresses"] is True  # a joiner is reached before it is ready
        owner = service["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["uid"], owner["controller"]) == ("ChaosTrainingJob", "u-1", True)


def test_a_node_port_pod_waits_for_its_port_then_advertises_its_node_and_that_port() -> None:
    job = _federation(expose={"type": "NodePort"})
    created = build_pod_service(job, 1)
    with pytest.raises(AddressPending, match="nodePort"):
        advertise_url(job, 1, created)  # not allocated yet
    with pytest.raises(AddressPending):
        build_pod(job, 1)  # nor without the Service
    created["spec"]["ports"][0]["nodePort"] = 31207  # what the API server allocates
    url = advertise_url(job, 1, created)
    assert url == "http://$(CHAOS_HOST_IP):31207"
    pod = build_pod(job, 1, advertise=url)
    trainer, sidecar = pod["spec"]["containers"]
    assert sidecar["args"][sidecar["args"].index("--advertise") + 1] == url
    env = {e["name"]: e for e in sidecar["env"]}
    assert env["CHAOS_HOST_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    # gloo binds the pod's own address, not the node's the sidecar advertises
    address = next(e for e in trainer["env"] if e["name"] == trainer_env.ADDRESS)
    assert address["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_a_load_balancer_pod_waits_for_the_ingress_address_unless_its_template_needs_none() -> None:
    job = _federation(expose={"type": "LoadBalancer"})
    service = build_pod_service(job, 0)
    with pytest.raises(AddressPending, match="ingress"):
        advertise_url(job, 0, service)
    service["status"] = {"loadBalancer": {"ingress": [{"hostname": "lb-0.elb.example"}]}}
    assert advertise_url(job, 0, service) == "http://lb-0.elb.example:7070"
    service["status"] = {"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}}
    assert advertise_url(job, 0, service) == "http://192.0.2.7:7070"
    template = "https://{job}-{index}.{namespace}.site-a.example:{port}"
    named = _federation(expose={"type": "LoadBalancer", "advertise": template})
    assert advertise_url(named, 2) == "https://mnist-minimal-2.ml.site-a.example:7070"
    node = _federation(expose=NODE_PORT | {"advertise": "http://{node}.site-a.example:{port}"})
    svc = build_pod_service(node, 0)
    svc["spec"]["ports"][0]["nodePort"] = 30001
    sidecar = build_pod(node, 0, advertise=advertise_url(node, 0, svc))["spec"]["containers"][1]
    assert (
        sidecar["args"][sidecar["args"].index("--advertise") + 1]
        == "http://$(CHAOS_NODE_NAME).site-a.example:30001"
    )
    assert {"name": "CHAOS_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in sidecar[
        "env"
    ]


def test_the_network_policy_admits_outside_parties_of_an_exposed_job_and_warns_when_none() -> None:
    job = _federation(expose={"type": "NodePort"}, peers=["b0=http://198.51.100.10:7070"])
    ingress = build_network_policy(job)["spec"]["ingress"]
    assert {"from": [{"ipBlock": {"cidr": "198.51.100.10/32"}}]} in ingress  # every port
    assert network_policy_warnings(job) == []
    alone = _federation(expose={"type": "NodePort"})
    [warning] = network_policy_warnings(alone)
    assert "expose is NodePort" in warning and "federationCIDRs" in warning
    cidrs = _job(
        federation={"expose": {"type": "NodePort"}}, networkPolicy={"federationCIDRs": ["203.0.113.0/28"]}
    )
    assert network_policy_warnings(cidrs) == []
    assert {"from": [{"ipBlock": {"cidr": "203.0.113.0/28"}}]} in build_network_policy(cidrs)["spec"][
        "ingress"
    ]
    assert network_policy_warnings(_job()) == []  # not exposed: nothing to say
