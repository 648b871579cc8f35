"""The sidecar's Kubernetes side against a small HTTP server standing in for the API (real
sockets): discovery waits for a peer with an IP, reports back off on 403/5xx and get through,
and scale-in picks the members past the requested size."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web

from chaos_sidecar.adapters import kube_pod
from chaos_sidecar.membership import machine as sm
from chaos_sidecar.pod_contract import JOB_LABEL, REPORT_ANNOTATION, parse_report

pytestmark = pytest.mark.timeout(60)


class FakeApi:
    def __init__(self) -> None:
        self.pods: list[dict[str, Any]] = []
        self.replicas = 3
        self.fail_next: list[int] = []  # statuses to answer the next patches with
        self.patches: list[dict[str, Any]] = []

    async def list_pods(self, request: web.Request) -> web.Response:
        return web.json_response({"items": self.pods})

    async def configmap(self, request: web.Request) -> web.Response:
        return web.json_response({"data": {"job.json": json.dumps({"replicas": self.replicas})}})

    async def patch(self, request: web.Request) -> web.Response:
        if self.fail_next:
            return web.Response(status=self.fail_next.pop(0), text="no")
        body = await request.json()
        self.patches.append({"pod": request.match_info["name"], **body})
        return web.json_response({})


@pytest.fixture
async def api() -> AsyncIterator[tuple[FakeApi, kube_pod.PodApi]]:
    fake = FakeApi()
    app = web.Application()
    app.router.add_get("/api/v1/namespaces/ml/pods", fake.list_pods)
    app.router.add_get("/api/v1/namespaces/ml/configmaps/j-config", fake.configmap)
    app.router.add_patch("/api/v1/namespaces/ml/pods/{name}", fake.patch)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    client = kube_pod.PodApi.from_environ(
        {"CHAOS_KUBE_API": f"http://127.0.0.1:{port}", "CHAOS_POD_NAMESPACE": "ml"}
    )
    yield fake, client
    await client.close()
    await runner.cleanup()


def _pod(name: str, ip: str | None, job: str = "j") -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {JOB_LABEL: job}}, "status": {"podIP": ip} if ip else {}}


async def test_discovery_waits_for_a_peer_with_an_ip(api) -> None:
    fake, client = api
    fake.pods = [_pod("j-0", None), _pod("j-1", "10.0.0.2"), _pod("other-0", "10.0.0.9", job="other")]
    fake.pods[1]["status"] = {}  # nobody has an IP yet
    found = asyncio.create_task(kube_pod.discover_contacts(client, "j", "j-1", have_contacts=False))
    await asyncio.sleep(0.5)
    assert not found.done()
    fake.pods[0]["status"] = {"podIP": "10.0.0.1"}
    contacts = await asyncio.wait_for(found, 10)
    assert contacts == (("j-0", "http://10.0.0.1:7070"),)  # not itself, not another job's pod


def _runtime(members: list[str], me: str) -> SimpleNamespace:
    view = SimpleNamespace(epoch=5, members=tuple(members), coordinator=members[0])
    runtime = SimpleNamespace(state=SimpleNamespace(view=view, status=sm.MEMBER), changed=asyncio.Condition())
    runtime.applied = []

    async def apply(event: Any) -> None:
        runtime.applied.append(event)

    runtime.apply = apply
    return runtime


async def test_reports_back_off_on_api_errors_and_get_through(api) -> None:
    fake, client = api
    reporter = kube_pod.PodReporter(client, "j", "j-1", _runtime(["j-0", "j-1"], "j-1"), lambda: 12)
    fake.fail_next = [403, 503]
    assert not await reporter.send(reporter.report())
    assert reporter.backoff_s() == 1.0
    assert not await reporter.send(reporter.report())
    assert reporter.backoff_s() == 2.0
    assert await reporter.send(reporter.report())
    assert reporter.backoff_s() == 0.0
    (patch,) = fake.patches
    assert patch["pod"] == "j-1"  # only its own pod
    report = parse_report(patch["metadata"]["annotations"][REPORT_ANNOTATION], job="j", pod="j-1")
    assert report["step"] == 12 and report["view"]["members"] == ["j-0", "j-1"] and not report["released"]


async def test_scale_in_leaves_only_the_members_past_the_requested_size(api) -> None:
    fake, client = api
    fake.replicas = 3
    members = ["j-0", "j-1", "j-2", "j-3", "j-4"]
    leavers = []
    for me in members:
        runtime = _runtime(members, me)
        await kube_pod.PodReporter(client, "j", me, runtime, lambda: None)._check_scale_in()
        if runtime.applied:
            assert isinstance(runtime.applied[0], sm.RequestLeave)
            leavers.append(me)
    assert leavers == ["j-3", "j-4"]
    fake.replicas = 5
    runtime = _runtime(members, "j-4")
    await kube_pod.PodReporter(client, "j", "j-4", runtime, lambda: None)._check_scale_in()
    assert runtime.applied == []
