"""A real Prometheus (Debian's package) scrapes a real operator and the sidecars of a short local
job; ``promtool check metrics`` reads their /metrics; every dashboard query returns that job's series.

The operator runs as its own process (``chaos-train operator``) against the kmock API emulator
and creates the job's pods there; real sidecar processes stand in for those pods, named after
them. Prometheus gets the targets with the labels Kubernetes discovery would give them (the
pod's namespace, name and labels) and the rendered PodMonitor's relabelings, so a series reaches
the dashboards labelled exactly as in a cluster.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest
import pytest_asyncio
import yaml
from kmock._internal.apps import Server

from chaos_lab.benchmarks.transfer import make_state
from chaos_lab.localcluster import LocalCluster
from chaos_sidecar.adapters.peer_stream import STREAM_PATH
from chaos_sidecar.transfer.snapshot import data_path, manifest_path
from chaos_train.sidecar_client import SidecarClient

PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")
pytestmark = [
    pytest.mark.skipif(
        not (PROMETHEUS and PROMTOOL),
        reason="promtool/prometheus not found: Debian's prometheus package is not installed "
        "(make test installs it when run as root)",
    ),
    pytest.mark.asyncio(loop_scope="module"),
    pytest.mark.timeout(120),
]
ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "charts" / "chaos-training" / "files" / "dashboards"
QUERIES = [
    (f"{path.stem}: {panel['title']}", target)
    for path in sorted(DASHBOARDS.glob("*.json"))
    for panel in json.loads(path.read_text())["panels"]
    for target in panel["targets"]
]
JOB = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
NAMESPACE = "ml"
SCRAPE = "500ms"
DEADLINE_S = 45.0
# what prometheus-operator gives every target: a ServiceMonitor's job is its Service's name
OPERATOR_TARGET_LABELS = {"namespace": "chaos-system"}
OPERATOR_SCRAPE_JOB = "chaos-chaos-operator-metrics"
POD_TARGET_RELABELINGS = [  # prometheus-operator's own, before the PodMonitor's
    {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
    {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
]
RELABEL_FIELDS = {"sourceLabels": "source_labels", "targetLabel": "target_label", "regex": "regex",
                  "replacement": "replacement", "action": "action", "separator": "separator"}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _until(what: str, check: Callable[[], Awaitable[Any]], timeout: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.1)
    return value


async def _get(session: aiohttp.ClientSession, url: str, **params: str) -> Any:
    """JSON or text from ``url``; None while it cannot answer yet."""
    try:
        async with session.get(url, params=params) as response:
            if response.status != 200:
                return None
            return await (response.json() if "json" in response.content_type else response.text())
    except (aiohttp.ClientError, OSError):
        return None


def _discovered_labels(pod: dict[str, Any]) -> dict[str, str]:
    """The meta labels Kubernetes service discovery gives a pod target."""
    meta = pod["metadata"]
    labels = {"__meta_kubernetes_namespace": meta["namespace"], "__meta_kubernetes_pod_name": meta["name"]}
    for key, value in (meta.get("labels") or {}).items():
        labels["__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", key)] = value
    return labels


def _relabel_configs(pod_monitor: dict[str, Any]) -> list[dict[str, Any]]:
    """The rendered PodMonitor's relabelings in Prometheus' configuration syntax."""
    endpoint = pod_monitor["spec"]["podMetricsEndpoints"][0]
    return [{RELABEL_FIELDS[k]: v for k, v in rule.items()} for rule in endpoint["relabelings"]]


@dataclass
class Stack:
    prometheus: str
    metrics_pages: dict[str, str]  # target -> its /metrics URL
    session: aiohttp.ClientSession

    async def query(self, expr: str) -> list[dict[str, Any]]:
        answer = await _get(self.session, self.prometheus + "/api/v1/query", query=expr)
        assert answer is not None and answer["status"] == "success", (expr, answer)
        return answer["data"]["result"]


async def _start_operator(url: str, workdir: Path) -> tuple[subprocess.Popen, str]:
    kubeconfig = workdir / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "emulator", "user": {}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "emulator"}}],
    }))  # fmt: skip
    port = _free_port()
    env = os.environ | {"KUBECONFIG": str(kubeconfig), "CHAOS_OPERATOR_METRICS_PORT": str(port),
                        "CHAOS_OPERATOR_STATUS_INTERVAL": "1"}  # fmt: skip
    # all namespaces: kmock cannot list namespaces, which Kopf's single-namespace mode needs
    command = [sys.executable, "-m", "chaos_sidecar.cli", "operator", "--server", url, "--all-namespaces",
               "--standalone"]  # fmt: skip
    stderr = (workdir / "operator.stderr").open("wb")
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=stderr
    ), f"http://127.0.0.1:{port}"


async def _start_job(cluster: LocalCluster, pods: list[dict[str, Any]], workdir: Path) -> None:
    """Two founding members holding a snapshot; the third joins and pulls it from both, and every
    trainer's part is played through the SDK's own client: join, pull, report steps."""
    names = [p["metadata"]["name"] for p in pods]
    origin = workdir / "origin"
    make_state(origin, "state", state_mb=2)
    for name in names:
        (workdir / name).mkdir()
    for name in names[:2]:
        os.link(data_path(origin, "state"), data_path(workdir / name, "state"))
        os.link(manifest_path(origin, "state"), manifest_path(workdir / name, "state"))

    def extra(name: str) -> list[str]:
        # no trainer process keeps calling, so no trainer lease: a silent trainer makes its sidecar leave
        return ["--snapshot-dir", str(workdir / name), "--trainer-lease-s", "0"]

    nodes = [await cluster.start(names[0], seed=True, extra=extra(names[0]))]
    nodes.append(await cluster.start(names[1], extra=extra(names[1])))
    await cluster.wait_agreed(set(names[:2]))
    nodes.append(await cluster.start(names[2], extra=[*extra(names[2]), "--defer-join"]))  # joins when asked
    joiner = SidecarClient(nodes[2].local_url)
    await asyncio.to_thread(joiner.join)
    await cluster.wait_agreed(set(names))
    pulled = await asyncio.to_thread(joiner.pull, "state", names[:2])
    assert "error" not in pulled, pulled
    for node in nodes:
        await asyncio.to_thread(SidecarClient(node.local_url).report, step=3, idle_s=0.05)
    assert cluster.session is not None
    async with cluster.session.get(nodes[0].url + STREAM_PATH) as response:  # no credentials
        assert response.status == 401


def _scrape_config(pods: list[dict], cluster: LocalCluster, operator_url: str, pod_monitor: dict) -> dict:
    """What prometheus-operator would generate from the chart's monitors for these targets."""
    sidecars = [
        {
            "targets": [cluster.nodes[p["metadata"]["name"]].url[len("http://") :]],
            "labels": _discovered_labels(p),
        }
        for p in pods
    ]
    operator = [{"targets": [operator_url[len("http://") :]], "labels": OPERATOR_TARGET_LABELS}]
    return {
        "global": {"scrape_interval": SCRAPE, "scrape_timeout": SCRAPE},
        "scrape_configs": [
            {"job_name": "chaos-sidecars", "static_configs": sidecars,
             "relabel_configs": POD_TARGET_RELABELINGS + _relabel_configs(pod_monitor)},
            {"job_name": OPERATOR_SCRAPE_JOB, "static_configs": operator},
        ],
    }  # fmt: skip


async def _start_prometheus(config: dict[str, Any], workdir: Path, session: aiohttp.ClientSession):
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    for _attempt in range(3):  # a free port may be taken before Prometheus binds it
        address = f"127.0.0.1:{_free_port()}"
        process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={workdir / 'prometheus.yml'}", f"--web.listen-address={address}",
             f"--storage.tsdb.path={workdir / 'tsdb'}", "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=(workdir / "prometheus.stderr").open("ab"),
        )  # fmt: skip

        async def ready(process=process, address=address) -> bool:
            return process.poll() is not None or await _get(session, f"http://{address}/-/ready") is not None

        await _until("Prometheus to start", ready)
        if process.poll() is None:
            return process, f"http://{address}"
    raise AssertionError(f"Prometheus did not start: {(workdir / 'prometheus.stderr').read_text()[-2000:]}")


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory, render_chart) -> AsyncIterator[Stack]:
    workdir = tmp_path_factory.mktemp("prometheus")
    rendered = render_chart({"metrics": {"podMonitor": {"enabled": True}}})
    pod_monitor = next(o for o in rendered if o["kind"] == "PodMonitor")
    job = copy.deepcopy(JOB)
    job["metadata"] |= {"namespace": NAMESPACE, "uid": "uid-1", "resourceVersion": "1"}  # kmock sets neither
    processes: list[subprocess.Popen] = []
    async with (
        kmock.KubernetesEmulator() as emulator,
        Server(emulator) as server,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
        LocalCluster(workdir / "sidecars") as cluster,
    ):
        emulator.resources.load_bundled()
        emulator.resources["chaostraining.io/v1alpha1/chaostrainingjobs"] = {
            "kind": "ChaosTrainingJob", "singular": "chaostrainingjob", "namespaced": True,
            "verbs": ["list", "watch", "get", "create", "patch", "update", "delete"],
        }  # fmt: skip
        api = str(server.url).rstrip("/")
        try:
            operator, operator_url = await _start_operator(api, workdir)
            processes.append(operator)
            jobs = f"{api}/apis/chaostraining.io/v1alpha1/namespaces/{NAMESPACE}/chaostrainingjobs"
            async with session.post(jobs, json=job) as response:
                assert response.status in (200, 201)

            async def three_pods() -> list[dict[str, Any]] | None:
                listed = await _get(session, f"{api}/api/v1/namespaces/{NAMESPACE}/pods") or {}
                pods = sorted(listed.get("items") or [], key=lambda p: p["metadata"]["name"])
                return pods if len(pods) == 3 else None

            pods = await _until("the operator to create the job's 3 pods", three_pods)
            await _start_job(cluster, pods, workdir)
            config = _scrape_config(pods, cluster, operator_url, pod_monitor)
            prometheus, url = await _start_prometheus(config, workdir, session)
            processes.append(prometheus)
            pages = {name: node.url + "/metrics" for name, node in cluster.nodes.items()}
            yield Stack(url, pages | {"operator": operator_url + "/metrics"}, session)
        finally:
            _stop(processes)


async def test_promtool_accepts_every_live_metrics_page(stack: Stack) -> None:
    job = JOB["metadata"]["name"]

    async def operator_reports_the_job() -> bool:
        page = await _get(stack.session, stack.metrics_pages["operator"])
        return page is not None and f'job_name="{job}"' in page

    await _until("the operator's series of the job", operator_reports_the_job)
    assert len(stack.metrics_pages) == 4
    for target, url in stack.metrics_pages.items():
        page = await _get(stack.session, url)
        assert page and "chaostrain_" in page, target
        checked = subprocess.run([PROMTOOL, "check", "metrics"], input=page, capture_output=True, text=True,
                                 timeout=30)  # fmt: skip
        assert (checked.returncode, checked.stdout + checked.stderr) == (0, ""), target


async def test_promtool_can_fail() -> None:
    page = "# HELP x_latency_ms Latency.\n# TYPE x_latency_ms gauge\nx_latency_ms 1\n"
    checked = subprocess.run([PROMTOOL, "check", "metrics"], input=page, capture_output=True, text=True,
                             timeout=30)  # fmt: skip
    assert checked.returncode != 0 and "abbreviated units" in checked.stdout + checked.stderr


async def test_every_dashboard_query_returns_series_of_the_job(stack: Stack) -> None:
    """Each query answers, and every series it returns is the job's, with every label its legend
    names (a legend naming a label Prometheus overwrote, like `job`, would show the wrong thing)."""

    async def answers() -> dict[str, list] | None:
        results = {expr: await stack.query(expr) for expr in {t["expr"] for _, t in QUERIES}}
        return results if all(results.values()) else None

    try:
        results = await _until("every dashboard query to return data", answers)
    except AssertionError:
        empty = [name for name, t in QUERIES if not await stack.query(t["expr"])]
        targets = await _get(stack.session, stack.prometheus + "/api/v1/targets")
        health = [(t["labels"].get("pod"), t["health"], t["lastError"], t["lastScrapeDuration"])
                  for t in targets["data"]["activeTargets"]]  # fmt: skip
        raise AssertionError(f"queries without data: {empty}; targets: {health}") from None
    for name, target in QUERIES:
        legend_labels = set(re.findall(r"{{\s*(\w+)\s*}}", target["legendFormat"]))
        for series in results[target["expr"]]:
            labels = series["metric"]
            assert labels.get("job_namespace") == NAMESPACE, (name, labels)
            assert labels.get("job_name") == JOB["metadata"]["name"], (name, labels)
            assert not [k for k in labels if k.startswith("exported_")], (name, labels)
            assert legend_labels <= set(labels), (name, legend_labels - set(labels))
