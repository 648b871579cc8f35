"""The Helm chart: lint with the real Helm library, values schema, CRD copy, dashboards."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from chaos_lab.localcluster import LocalCluster
from chaos_operator import metrics as operator_metrics

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "chaos-training"
HELM_VENV = ROOT / ".venv-helm"
LINT = """
import asyncio, json, sys, helm_sdkpy
result = asyncio.run(helm_sdkpy.Lint(helm_sdkpy.Configuration()).run(sys.argv[1]))
print(json.dumps({"errors": len(result.get("Errors") or []),
                  "severities": [m.get("Severity") for m in result.get("Messages") or []]}))
"""


def _python312() -> str | None:
    candidates = [str(p) for p in sorted(Path.home().glob(".pyenv/versions/3.12*/bin/python"))]
    candidates += [c for c in [shutil.which("python3.12")] if c]
    for candidate in candidates:  # a pyenv shim may exist without a usable interpreter behind it
        probe = subprocess.run([candidate, "--version"], capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.startswith("Python 3.12"):
            return candidate
    return None


@pytest.fixture(scope="session")
def helm_python() -> str:
    """A Python 3.12 environment with helm-sdkpy (Helm's Go library), made once and kept."""
    python = HELM_VENV / "bin" / "python"
    if not python.exists():
        base = _python312()
        if base is None:
            pytest.skip("charts: helm-sdkpy needs Python 3.12, which this machine does not have")
        try:
            subprocess.run([base, "-m", "venv", str(HELM_VENV)], check=True, capture_output=True, timeout=120)
            subprocess.run([str(python), "-m", "pip", "install", "-q", "helm-sdkpy"], check=True,
                           capture_output=True, timeout=600)  # fmt: skip
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            shutil.rmtree(HELM_VENV, ignore_errors=True)
            pytest.skip(f"charts: could not install helm-sdkpy: {exc}")
    return str(python)


def _lint(helm_python: str, chart: Path) -> dict:
    out = subprocess.run([helm_python, "-c", LINT, str(chart)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_chart_lints_clean(helm_python: str) -> None:
    result = _lint(helm_python, CHART)
    assert result["errors"] == 0, result
    assert max(result["severities"], default=0) < 3  # INFO at most (e.g. "icon is recommended")


def test_values_breaking_the_schema_are_rejected_by_helm(helm_python: str, tmp_path: Path) -> None:
    bad = tmp_path / "chaos-training"
    shutil.copytree(CHART, bad)
    values = yaml.safe_load((bad / "values.yaml").read_text())
    values["operator"]["replicas"] = 0
    (bad / "values.yaml").write_text(yaml.safe_dump(values))
    assert _lint(helm_python, bad)["errors"] > 0


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


def _exported(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
        names |= {family.name + s for s in suffixes.get(family.type, [""])}
    return names


async def test_every_dashboard_query_names_exported_metrics(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path) as cluster:
        node = await cluster.start("n0", seed=True, extra=["--snapshot-dir", str(tmp_path)])
        with urllib.request.urlopen(node.url + "/metrics", timeout=10) as response:
            sidecar_text = response.read().decode()
    port = operator_metrics.serve(0)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        operator_text = response.read().decode()
    exported = _exported(sidecar_text) | _exported(operator_text)
    assert "chaostrain_view_epoch" in exported and "chaostrain_operator_reconciles_total" in exported
    used = set()
    for path in (CHART / "files" / "dashboards").glob("*.json"):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            assert panel["targets"], f"{path.name}: {panel['title']} has no query"
            for target in panel["targets"]:
                used |= set(re.findall(r"\bchaostrain_[a-z_]+", target["expr"]))
    missing = sorted(used - exported)
    assert not missing, f"dashboards query metrics nobody exports: {missing}"
    assert len(used) >= 15
