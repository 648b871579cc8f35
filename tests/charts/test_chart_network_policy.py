"""The chart's NetworkPolicy for the operator's pod: only the metrics port, only from the
configured Prometheus selectors; a switch or selector that does not parse is refused by
values.schema.json (Helm names the field)."""

from __future__ import annotations

import helm_python
import pytest

from chaos_lab.netpolicy import NAMESPACE_NAME_LABEL, Endpoint, allows

PROMETHEUS = {"app.kubernetes.io/name": "prometheus"}
MONITORING = {NAMESPACE_NAME_LABEL: "monitoring"}
NARROW = {
    "networkPolicy": {
        "metrics": {
            "namespaceSelector": {"matchLabels": MONITORING},
            "podSelector": {"matchLabels": PROMETHEUS},
        }
    }
}


def _policy(objects: list[dict]) -> dict | None:
    return next((o for o in objects if o["kind"] == "NetworkPolicy"), None)


def test_the_operator_pod_takes_only_metrics_and_only_from_prometheus(render_chart) -> None:
    objects = render_chart(NARROW)
    policy = _policy(objects)
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"] == pod_labels
    prometheus = Endpoint("10.0.0.2", PROMETHEUS, MONITORING)
    stranger = Endpoint("10.0.0.3", {"app": "web"}, {NAMESPACE_NAME_LABEL: "chaos-system"})
    elsewhere = Endpoint("10.0.0.4", PROMETHEUS, {NAMESPACE_NAME_LABEL: "default"})
    assert allows(policy, "chaos-system", prometheus, 8080)
    assert not allows(policy, "chaos-system", prometheus, 8081)  # liveness: the kubelet's only
    assert not allows(policy, "chaos-system", stranger, 8080)
    assert not allows(policy, "chaos-system", elsewhere, 8080)
    moved = _policy(render_chart({**NARROW, "metrics": {"port": 9100}}))
    assert allows(moved, "chaos-system", prometheus, 9100) and not allows(
        moved, "chaos-system", prometheus, 8080
    )


def test_by_default_any_pod_may_scrape_and_the_switch_removes_the_policy(render_chart) -> None:
    policy = _policy(render_chart())
    anyone = Endpoint("10.0.0.3", {"app": "web"}, {NAMESPACE_NAME_LABEL: "other"})
    assert allows(policy, "chaos-system", anyone, 8080) and not allows(policy, "chaos-system", anyone, 8081)
    assert _policy(render_chart({"networkPolicy": {"enabled": False}})) is None


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"enabled": "yes"}, "/networkPolicy/enabled"),
        (
            {"metrics": {"podSelector": {"matchLabels": {"bad key!": "x"}}}},
            "/networkPolicy/metrics/podSelector",
        ),
        (
            {"metrics": {"podSelector": {"matchLabels": {"app": "has space"}}}},
            "/networkPolicy/metrics/podSelector",
        ),
        (
            {"metrics": {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Is"}]}}},
            "/networkPolicy/metrics/namespaceSelector/matchExpressions/0/operator",
        ),
        (
            {"metrics": {"namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "In"}]}}},
            "/networkPolicy/metrics/namespaceSelector/matchExpressions/0",
        ),
        ({"metrics": {"podSelector": {"matchLabel": {"app": "x"}}}}, "/networkPolicy/metrics/podSelector"),
    ],
)
def test_a_bad_switch_or_selector_is_refused_naming_the_field(render_chart, values: dict, field: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=field):
        render_chart({"networkPolicy": values})
