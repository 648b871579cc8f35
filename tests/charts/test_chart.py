"""The Helm chart and the objects the operator builds, checked with the ecosystem's own tools: Helm's
Go SDK, the Kubernetes OpenAPI schemas (kubernetes-validate), Prometheus' PromQL grammar."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from pathlib import Path

import helm_python
import jsonschema
import kubernetes_validate
import promql_parser
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from chaos_lab.localcluster import LocalCluster
from chaos_operator import metrics as operator_metrics
from chaos_operator.domain import builders
from chaos_operator.domain.security import build_network_policy
from chaos_operator.domain.spec import parse_job
from chaos_sidecar.metrics import SidecarMetrics
from chart_renderings import RENDERINGS

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "chaos-training"
OLDEST_KUBERNETES = "1.30.0"  # Chart.yaml's kubeVersion floor
NEWEST_KUBERNETES = "1.37.0"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("kube_version", [OLDEST_KUBERNETES, NEWEST_KUBERNETES])
def test_chart_lints_clean(kube_version: str) -> None:
    result = helm_python.lint(str(CHART), strict=True, kube_version=kube_version)
    assert result["errors"] == [], result
    assert max((m["severity"] for m in result["messages"]), default=0) < 2  # INFO ("icon is recommended")


def test_chart_declares_the_oldest_kubernetes_the_tests_check() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={OLDEST_KUBERNETES}-0"


def test_values_breaking_the_schema_are_refused_by_helm_naming_the_field(render_chart) -> None:
    result = helm_python.lint(str(CHART), {"operator": {"replicas": 0}})
    assert any("/operator/replicas" in e for e in result["errors"]), result
    with pytest.raises(helm_python.HelmValuesError, match="/metrics/podMonitor/labels/release"):
        render_chart({"metrics": {"podMonitor": {"labels": {"release": 1}}}})


def test_values_match_their_schema_and_bad_ones_do_not() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(values, schema)
    for mutate in (
        lambda v: v["crds"].update(install="yes"),
        lambda v: v["metrics"].update(port=70000),
        lambda v: v["metrics"]["serviceMonitor"].update(interval="often"),
        lambda v: v["operator"]["image"].update(tag=""),
        lambda v: v.update(unknown=1),
    ):
        broken = json.loads(json.dumps(values))
        mutate(broken)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, schema)


def test_chart_crd_is_the_single_source_copy() -> None:
    assert (CHART / "files" / "crds" / "chaostrainingjobs.yaml").read_bytes() == (
        ROOT / "crds" / "chaostrainingjobs.yaml"
    ).read_bytes()
    crd = yaml.safe_load((ROOT / "crds" / "chaostrainingjobs.yaml").read_text())
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert "if .Values.crds.install" in (CHART / "templates" / "crd.yaml").read_text()


def test_dashboards_are_labelled_for_grafana() -> None:
    template = (CHART / "templates" / "dashboards.yaml").read_text()
    assert 'grafana_dashboard: "1"' in template
    names = {p.stem for p in (CHART / "files" / "dashboards").glob("*.json")}
    assert names == {"overview", "scaling", "network", "reliability"}


JOB_LABELS = {"job_namespace", "job_name"}


def dashboard_targets() -> list[tuple[str, str, dict]]:
    """(dashboard, panel title, target) for every query of every dashboard."""
    rows = []
    for path in sorted((CHART / "files" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            assert panel["targets"], f"{path.name}: {panel['title']} has no query"
            rows += [(path.stem, panel["title"], target) for target in panel["targets"]]
    return rows


def _parts(expr: str) -> tuple[set[str], list[promql_parser.AggregateExpr]]:
    """The metric names a query reads and its aggregations, from Prometheus' own grammar."""
    names: set[str] = set()
    aggregations: list[promql_parser.AggregateExpr] = []

    def visit(node) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(node.name)
        elif isinstance(node, promql_parser.AggregateExpr):
            aggregations.append(node)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names, aggregations


def test_the_promql_parser_refuses_a_broken_query() -> None:
    with pytest.raises(ValueError):
        _parts("sum by (job_name) (rate(chaostrain_step[5m])")


@pytest.mark.parametrize(("board", "panel", "target"), dashboard_targets(), ids=lambda v: str(v)[:40])
def test_every_dashboard_query_parses_and_keeps_the_job_labels(board: str, panel: str, target: dict) -> None:
    """Two jobs (in one namespace or several) must stay two lines: no aggregation drops them."""
    names, aggregations = _parts(target["expr"])
    assert names and all(n.startswith("chaostrain_") for n in names), names
    for aggregation in aggregations:
        modifier = aggregation.modifier
        assert modifier is not None and modifier.type == promql_parser.AggModifierType.By, target["expr"]
        assert set(modifier.labels) >= JOB_LABELS, target["expr"]
    assert "{{job_namespace}}/{{job_name}}" in target["legendFormat"]


def _families(text: str) -> dict[str, str]:
    """Family name -> type, for what a /metrics page exposes (less the client's ``_created``)."""
    families = {f.name: f.type for f in text_string_to_metric_families(text)}
    created = {f"{name}_created" for name, kind in families.items() if kind in ("counter", "histogram")}
    return {name: kind for name, kind in families.items() if name not in created}


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The families a running sidecar and the operator's metrics server expose."""

    async def sidecar() -> str:
        tmp = tmp_path_factory.mktemp("sidecar")
        async with LocalCluster(tmp) as cluster:
            node = await cluster.start("n0", seed=True, extra=["--snapshot-dir", str(tmp)])
            with urllib.request.urlopen(node.url + "/metrics", timeout=10) as response:
                return response.read().decode()

    port = operator_metrics.serve(0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        operator_text = response.read().decode()
    return _families(asyncio.run(sidecar())) | _families(operator_text)


def _sample_names(family: str, kind: str) -> set[str]:
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(kind, [""])
    return {family + s for s in suffixes}


def test_every_dashboard_query_names_exported_metrics(exposed: dict[str, str]) -> None:
    exported = set().union(*(_sample_names(f, k) for f, k in exposed.items()))
    assert "chaostrain_view_epoch" in exported and "chaostrain_operator_reconciles_total" in exported
    used = set().union(*(_parts(t["expr"])[0] for _, _, t in dashboard_targets()))
    missing = sorted(used - exported)
    assert not missing, f"dashboards query metrics nobody exports: {missing}"
    assert len(used) >= 15


def _documented() -> dict[str, dict[str, str]]:
    """docs/metrics.md's metric table: exposed name -> its row (type, unit, labels)."""
    rows = {}
    for line in (ROOT / "docs" / "metrics.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`chaostrain_"):
            name, kind, unit, labels, _ = cells
            rows[name.strip("`")] = {"type": kind, "unit": unit, "labels": labels}
    return rows


def test_docs_list_every_metric_with_its_type_unit_and_labels(exposed: dict[str, str]) -> None:
    documented = _documented()
    exposed_names = {next(iter(_sample_names(f, k))) if k != "histogram" else f for f, k in exposed.items()}
    assert set(documented) == exposed_names
    collectors = [
        c
        for c in [*vars(SidecarMetrics()).values(), *vars(operator_metrics).values()]
        if isinstance(c, MetricWrapperBase)
    ]
    for collector in collectors:
        family = collector._name  # prometheus_client keeps declared label names only privately
        name = family + "_total" if collector._type == "counter" else family
        row = documented[name]
        assert row["type"].split()[0] == collector._type, name
        assert sorted(re.findall(r"`(\w+)`", row["labels"])) == sorted(collector._labelnames), name
        unit = next((u for suffix, u in UNITS if family.endswith(suffix)), "")
        assert row["unit"] == unit, f"{name}: documented unit {row['unit']!r}, the name says {unit!r}"


UNITS = (("_bytes_per_second", "bytes/s"), ("_seconds", "seconds"), ("_bytes", "bytes"))


def test_a_namespaced_install_creates_only_namespaced_rbac(render_chart) -> None:
    objects = render_chart({"operator": {"clusterWide": False}})
    kinds = {o["kind"] for o in objects}
    assert {"Role", "RoleBinding"} <= kinds and not kinds & {"ClusterRole", "ClusterRoleBinding"}
    for obj in objects:
        if obj["kind"] != "CustomResourceDefinition":  # cluster-scoped by nature, installed by Helm
            assert obj["metadata"].get("namespace") == "chaos-system", obj["kind"]
    deployment = next(o for o in objects if o["kind"] == "Deployment")
    assert "--namespace=chaos-system" in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    cluster_wide = {o["kind"] for o in render_chart()}
    assert {"ClusterRole", "ClusterRoleBinding"} <= cluster_wide and not cluster_wide & {
        "Role",
        "RoleBinding",
    }


def test_monitors_take_labels_and_annotations_and_carry_the_job_label(render_chart) -> None:
    extra = {"labels": {"release": "kube-prometheus-stack"}, "annotations": {"team": "ml"}}
    values = {
        "metrics": {"serviceMonitor": {"enabled": True, **extra}, "podMonitor": {"enabled": True, **extra}}
    }
    monitors = [o for o in render_chart(values) if o["kind"] in ("ServiceMonitor", "PodMonitor")]
    assert len(monitors) == 2
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["metadata"]["labels"]["app.kubernetes.io/name"] == "chaos-training"
        assert monitor["metadata"]["annotations"] == {"team": "ml"}
    pod_monitor = next(m for m in monitors if m["kind"] == "PodMonitor")
    relabelings = pod_monitor["spec"]["podMetricsEndpoints"][0]["relabelings"]
    targets = {r["targetLabel"]: r["sourceLabels"] for r in relabelings}
    assert targets == {
        "job_name": ["__meta_kubernetes_pod_label_chaostraining_io_job"],  # the pod label JOB_LABEL
        "job_namespace": ["__meta_kubernetes_namespace"],
    }
    assert "annotations" not in next(o for o in render_chart() if o["kind"] == "Deployment")["metadata"]


# --- Kubernetes' own schemas ---------------------------------------------------------------------

MONITOR_KINDS = {"ServiceMonitor", "PodMonitor"}  # prometheus-operator's: no Kubernetes schema for them


def _schema_failures(objects: list[dict], kube_version: str) -> list[str]:
    """Strict validation (unknown fields refused) against Kubernetes ``kube_version``'s OpenAPI."""
    failures = []
    for obj in objects:
        if obj["kind"] in MONITOR_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(map(str, exc.absolute_path))
            failures.append(f"{obj['kind']}/{obj['metadata'].get('name')}: {where}: {exc.message}")
    return failures


def _built_objects(example: Path) -> list[dict]:
    """What the operator creates for ``example``: shared objects, and each pod with its RBAC."""
    manifest = yaml.safe_load(example.read_text())
    manifest["metadata"] |= {"namespace": "ml", "uid": "0b0e4f9c-5a55-4c9e-9d0e-2d1f4d4b7a10"}
    job = parse_job(manifest)
    objects = [builders.build_service(job), builders.build_configmap(job), build_network_policy(job)]
    for index in sorted({0, job.desired - 1}):
        objects += [builders.build_service_account(job, index), builders.build_pod_role(job, index)]
        objects += [builders.build_role_binding(job, index), builders.build_pod(job, index)]
        objects += [s for s in [builders.build_pod_service(job, index)] if s is not None]  # federation.expose
    return objects


@pytest.mark.parametrize("kube_version", [OLDEST_KUBERNETES, NEWEST_KUBERNETES])
@pytest.mark.parametrize("rendering", sorted(RENDERINGS))
def test_every_rendered_object_passes_the_kubernetes_schemas(render_chart, rendering, kube_version) -> None:
    objects = render_chart(RENDERINGS[rendering])
    assert {"Deployment", "Service", "ServiceAccount", "CustomResourceDefinition"} <= {
        o["kind"] for o in objects
    }
    assert _schema_failures(objects, kube_version) == []


@pytest.mark.parametrize("kube_version", [OLDEST_KUBERNETES, NEWEST_KUBERNETES])
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_every_object_the_operator_builds_passes_the_kubernetes_schemas(example: Path, kube_version) -> None:
    objects = _built_objects(example)
    assert {o["kind"] for o in objects} == {
        "Service",
        "ConfigMap",
        "ServiceAccount",
        "Role",
        "RoleBinding",
        "Pod",
        "NetworkPolicy",
    }
    assert _schema_failures(objects, kube_version) == []


def test_the_strict_schemas_refuse_an_unknown_field() -> None:
    pod = _built_objects(EXAMPLES[0])[-1]
    pod["spec"]["containers"][0]["imagePullPolcy"] = "Always"  # a typo a loose check would let pass
    failures = _schema_failures([pod], OLDEST_KUBERNETES)
    assert len(failures) == 1 and "imagePullPolcy" in failures[0]
