"""The membership protocol between real sidecar processes on loopback."""

from __future__ import annotations

import time

import aiohttp
import pytest

from chaos_lab.localcluster import LocalCluster
from chaos_sidecar.adapters.peer_stream import STREAM_PATH
from chaos_sidecar.eventlog import Kind
from chaos_sidecar.security import frame_mac, signed_headers

pytestmark = pytest.mark.timeout(120)


async def _group(cluster: LocalCluster, size: int) -> set[str]:
    await cluster.start("n0", seed=True)
    for i in range(1, size):
        await cluster.start(f"n{i}")
    members = {f"n{i}" for i in range(size)}
    await cluster.wait_agreed(members, 30)
    return members


async def test_join_crash_leave_and_link_events(tmp_path) -> None:
    async with LocalCluster(tmp_path) as cluster:
        members = await _group(cluster, 5)
        first = await cluster.view("n0")
        # a crash: the others remove the victim
        cluster.kill("n3")
        members -= {"n3"}
        after_crash = await cluster.wait_agreed(members)
        assert after_crash["view"]["epoch"] > first["view"]["epoch"]
        # a link down between two members that still reach a majority: topology only
        await cluster.block("n1", "n2")
        settled = await cluster.wait_agreed(members, check=lambda v: ["n1", "n2"] in v["topology"]["down"])
        assert settled["view"]["epoch"] == after_crash["view"]["epoch"]
        await cluster.block("n1", "n2", unblock=True)
        await cluster.wait_agreed(members, check=lambda v: v["topology"]["down"] == [])
        # a graceful leave (SIGTERM) and the coordinator's crash
        cluster.terminate("n4")
        members -= {"n4"}
        await cluster.wait_agreed(members)
        assert cluster.nodes["n4"].process.wait(timeout=10) == 0
        cluster.kill("n0")
        members -= {"n0"}
        final = await cluster.wait_agreed(members)
        assert final["view"]["coordinator"] in members
        # the event logs tell the same story: every epoch was installed with one view
        views_by_epoch: dict[int, set[tuple]] = {}
        for record in cluster.read_logs():
            if record.kind is Kind.INSTALLED:
                views_by_epoch.setdefault(record["epoch"], set()).add(
                    (tuple(record["members"]), record["coordinator"])
                )
        assert all(len(v) == 1 for v in views_by_epoch.values()), views_by_epoch


async def test_minority_side_cannot_commit(tmp_path) -> None:
    async with LocalCluster(tmp_path) as cluster:
        members = await _group(cluster, 5)
        epoch = (await cluster.view("n0"))["view"]["epoch"]
        minority, majority = {"n3", "n4"}, members - {"n3", "n4"}
        for a in minority:
            for b in majority:
                await cluster.block(a, b)
        await cluster.wait_agreed(majority)
        for node in minority:
            view = await cluster.view(node)
            # the minority never commits a newer view of its own
            assert view["view"]["epoch"] == epoch
            assert set(view["view"]["members"]) == members
        for a in minority:
            for b in majority:
                await cluster.block(a, b, unblock=True)
        await cluster.wait_agreed(members)


async def test_peer_stream_rejects_unauthenticated(tmp_path) -> None:
    async with LocalCluster(tmp_path) as cluster:
        await _group(cluster, 3)
        url = cluster.nodes["n0"].url + STREAM_PATH
        async with aiohttp.ClientSession() as session:
            # no signature
            async with session.get(url) as response:
                assert response.status == 401
            # wrong secret
            bad = signed_headers(b"x" * 32, "GET", STREAM_PATH, b"", time.time_ns(), "n1")
            async with session.get(url, headers=bad) as response:
                assert response.status == 401
            # expired
            old = signed_headers(cluster.secret, "GET", STREAM_PATH, b"", time.time_ns() - 10**12, "n1")
            async with session.get(url, headers=old) as response:
                assert response.status == 401
            # a valid handshake works once; its replay is refused
            good = signed_headers(cluster.secret, "GET", STREAM_PATH, b"", time.time_ns(), "n1")
            async with session.ws_connect(url, headers=good) as ws:
                body = b'{"v":1,"kind":"view_request","from":"n1","epoch":0,"body":{}}'
                nonce = good["X-Chaos-Timestamp"]
                await ws.send_bytes(frame_mac(cluster.secret, "n1", nonce, 1, body) + body)
                # a frame with a bad MAC ends the stream
                await ws.send_bytes(b"\0" * 32 + body)
                message = await ws.receive(timeout=10)
                assert message.type in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.CLOSING,
                )
            async with session.get(url, headers=good) as response:
                assert response.status == 401
        view = await cluster.view("n0")
        for reason in ("unauthenticated", "bad_signature", "expired", "replayed"):
            assert view["rejections"].get(reason, 0) >= 1, (reason, view["rejections"])
