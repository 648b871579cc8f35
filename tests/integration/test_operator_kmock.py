"""The operator (Kopf, in-process) against an HTTP-level Kubernetes API emulator (kmock)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

os.environ.setdefault("CHAOS_OPERATOR_STATUS_INTERVAL", "0.5")  # before the timer registers

import kmock
import kopf
from kmock._internal.apps import Server

import chaos_operator.main  # noqa: F401 - registers the handlers
from chaos_operator import kube

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parents[2]
JOBS = "/apis/chaostraining.io/v1alpha1/namespaces/default/chaostrainingjobs"
PODS = "/api/v1/namespaces/default/pods"
_URL: dict[str, str] = {}


@kopf.on.login()
def _login_to_the_emulator(**_: Any) -> kopf.ConnectionInfo | None:
    url = _URL.get("url")  # None outside this module's tests (another module logs in then)
    return None if url is None else kopf.ConnectionInfo(server=url, insecure=True)


class Cluster:
    def __init__(self, emulator: kmock.KubernetesEmulator, url: str, session: aiohttp.ClientSession) -> None:
        self.emulator, self.url, self.session = emulator, url, session

    async def get(self, path: str) -> dict[str, Any]:
        async with self.session.get(self.url + path) as r:
            return await r.json() if r.status == 200 else {"status": r.status}

    async def send(self, method: str, path: str, body: dict[str, Any]) -> int:
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        async with self.session.request(method, self.url + path, json=body, headers=headers) as r:
            return r.status

    async def pods(self) -> list[dict[str, Any]]:
        return (await self.get(PODS)).get("items") or []

    async def until(self, what: str, check, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = await check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.05)


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with kmock.KubernetesEmulator() as emulator, Server(emulator) as server:
        emulator.resources.load_bundled()
        emulator.resources["chaostraining.io/v1alpha1/chaostrainingjobs"] = {
            "kind": "ChaosTrainingJob", "singular": "chaostrainingjob", "namespaced": True,
            "verbs": ["list", "watch", "get", "create", "patch", "update", "delete"], "shortnames": ["ctj"],
        }  # fmt: skip
        url = str(server.url).rstrip("/")
        _URL["url"] = url
        kube.connect(url)
        stop = asyncio.Event()
        settings = kopf.OperatorSettings()
        settings.watching.server_timeout = 5
        # clusterwide: kmock 0.8 cannot list /api/v1/namespaces, which namespace globs need
        task = asyncio.create_task(
            kopf.operator(clusterwide=True, standalone=True, stop_flag=stop, settings=settings)
        )
        async with aiohttp.ClientSession() as session:
            yield Cluster(emulator, url, session)
        stop.set()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
        _URL.pop("url", None)


def _job(replicas: int) -> dict[str, Any]:
    job = yaml.safe_load((ROOT / "examples" / "minimal.yaml").read_text())
    job["metadata"] |= {"namespace": "default", "resourceVersion": "1", "uid": "uid-1"}  # kmock sets neither
    job["spec"].update(replicas=replicas, minReplicas=1, maxReplicas=8)
    return job


async def test_job_reconciles_and_scales_out_and_in(cluster: Cluster) -> None:
    assert await cluster.send("POST", JOBS, _job(2)) in (200, 201)

    async def pod_count(n: int):
        pods = await cluster.pods()
        return pods if len(pods) == n else None

    pods = await cluster.until("2 pods", lambda: pod_count(2))
    assert sorted(p["metadata"]["name"] for p in pods) == ["mnist-minimal-0", "mnist-minimal-1"]
    assert any(c["name"] == "chaos-sidecar" for c in pods[0]["spec"]["containers"])
    service = await cluster.get("/api/v1/namespaces/default/services/mnist-minimal")
    assert service["spec"]["clusterIP"] == "None"
    rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles"
    for path in (
        "/api/v1/namespaces/default/configmaps/mnist-minimal-config",
        "/api/v1/namespaces/default/serviceaccounts/mnist-minimal-0",
        f"{rbac}/mnist-minimal-0",
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings/mnist-minimal-1",
    ):
        assert "metadata" in await cluster.get(path), path

    async def reconciled():
        status = (await cluster.get(f"{JOBS}/mnist-minimal")).get("status") or {}
        return (
            status
            if any(c["type"] == "Reconciled" and c["status"] == "True" for c in status.get("conditions", []))
            else None
        )

    await cluster.until("Reconciled condition", reconciled)

    # scale out: 2 -> 4
    assert await cluster.send("PATCH", f"{JOBS}/mnist-minimal", {"spec": {"replicas": 4}}) == 200
    await cluster.until("4 pods", lambda: pod_count(4))

    # scale in: 4 -> 2 waits for the group to release two members, then deletes exactly those
    assert await cluster.send("PATCH", f"{JOBS}/mnist-minimal", {"spec": {"replicas": 2}}) == 200

    async def scale_in_requested():
        status = (await cluster.get(f"{JOBS}/mnist-minimal")).get("status") or {}
        return (status.get("scaleIn") or {}).get("requested") == 2

    await cluster.until("scale-in request", scale_in_requested)
    # the sidecars read the requested size from the job's ConfigMap and choose who leaves
    config = await cluster.get("/api/v1/namespaces/default/configmaps/mnist-minimal-config")
    assert json.loads(config["data"]["job.json"])["replicas"] == 2
    assert len(await cluster.pods()) == 4  # nobody released yet: nobody deleted
    # (no sidecar runs here: tests/e2e_local carries the scale-in out with real ones)
    secret = await cluster.get("/api/v1/namespaces/default/secrets/mnist-minimal-join")
    assert len(base64.b64decode(secret["data"]["join-secret"])) >= 32
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


async def test_api_errors_are_survived_and_reported(cluster: Cluster) -> None:
    # a 5xx on the first Service create (retried), a 409 on the next (the object exists: patched)
    cluster.emulator["post /api/v1/namespaces/default/services"][:1] << 503
    cluster.emulator["post /api/v1/namespaces/default/pods"] << 403
    assert await cluster.send("POST", JOBS, _job(2)) in (200, 201)

    async def forbidden():
        status = (await cluster.get(f"{JOBS}/mnist-minimal")).get("status") or {}
        return any(c.get("reason") == "Forbidden" for c in status.get("conditions", []))

    await cluster.until("Forbidden condition", forbidden)
    service = await cluster.get("/api/v1/namespaces/default/services/mnist-minimal")
    assert service["spec"]["clusterIP"] == "None"


async def test_gone_watch_and_failed_pod_replacement(cluster: Cluster) -> None:
    jobs = kmock.resource("chaostraining.io", "v1alpha1", "chaostrainingjobs")
    # the first watch stream ends with "410 Gone" (resourceVersion too old), as the API server says it
    gone = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
            "message": "too old resource version"}  # fmt: skip
    cluster.emulator[kmock.action.WATCH, jobs][:1] << {"type": "ERROR", "object": gone}
    job = _job(2)
    job["spec"]["runPolicy"] = {"backoffLimit": 3}
    assert await cluster.send("POST", JOBS, job) in (200, 201)

    async def healthy_pods(n: int):
        pods = await cluster.pods()
        ok = [p for p in pods if (p.get("status") or {}).get("phase") != "Failed"]
        return pods if len(pods) == n and len(ok) == n else None

    await cluster.until("2 pods despite the 410 on the watch", lambda: healthy_pods(2))
    assert await cluster.send("PATCH", f"{PODS}/mnist-minimal-1", {"status": {"phase": "Failed"}}) == 200

    async def replaced():
        status = (await cluster.get(f"{JOBS}/mnist-minimal")).get("status") or {}
        return status.get("failures") == 1 and await healthy_pods(2)

    await cluster.until("the failed pod replaced after its backoff", replaced)
