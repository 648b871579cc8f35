"""Multi-source pulls between real processes: failover, corruption, tampering, auth."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from chaos_lab.baselines import sidecar_command, single_source
from chaos_lab.benchmarks.transfer import make_state, start_sources
from chaos_lab.localcluster import LocalCluster
from chaos_sidecar.errors import InputError
from chaos_sidecar.planning.model import Source
from chaos_sidecar.security import signed_headers
from chaos_sidecar.transfer.puller import Puller, TransferError, plan_pieces
from chaos_sidecar.transfer.snapshot import data_path, file_digest, manifest_path
from chaos_train.sidecar_client import SidecarClient

pytestmark = pytest.mark.timeout(120)
NAME = "state"


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    path = tmp_path / "origin"
    make_state(path, NAME, state_mb=8)
    return path


async def _pull(cluster, urls: dict[str, str], tmp_path, assume_Bps: float = 4e6, **kwargs):
    async with aiohttp.ClientSession() as session:
        puller = Puller(session, cluster.secret, "joiner", tmp_path / "joiner", NAME, **kwargs)
        return await puller.pull([Source(sid, assume_Bps, 0.002) for sid in urls], urls)


async def test_pull_from_three_sources_is_identical(tmp_path: Path, origin: Path) -> None:
    async with LocalCluster(tmp_path / "cluster") as cluster:
        urls = await start_sources(cluster, tmp_path, origin, NAME, 3, [8, 8, 8])
        result = await _pull(cluster, urls, tmp_path)
    assert file_digest(result.path) == file_digest(data_path(origin, NAME))
    assert sum(1 for s in result.per_source.values() if s.bytes) == 3  # all sources worked
    assert result.replans == 0


async def test_sources_underestimated_at_planning_are_measured_and_used(tmp_path: Path, origin: Path) -> None:
    """As a joiner's probes see links busy with gradients: s1 and s2 are estimated 100 times
    slower than they are, so the plan leaves them out. Each takes one shard, which measures
    it, then takes work off s0 (the fastest, which still sends the most). The same pull
    without rebalancing (the same split, passed in as a baseline would be) is the yardstick."""

    def planner_as_is(manifest, sources, download_Bps):  # not plan_pieces itself: no rebalancing
        return plan_pieces(manifest, sources, download_Bps)

    estimates = {"s0": 8e6, "s1": 4e4, "s2": 4e4}
    async with LocalCluster(tmp_path / "cluster") as cluster:
        urls = await start_sources(cluster, tmp_path, origin, NAME, 3, [8, 4, 4])
        async with aiohttp.ClientSession() as session:
            pulls = {}
            for label, split in (("as planned", planner_as_is), ("rebalanced", plan_pieces)):
                puller = Puller(session, cluster.secret, "joiner", tmp_path / label, NAME, split=split)
                pulls[label] = await puller.pull(
                    [Source(s, bps, 0.002) for s, bps in estimates.items()], urls
                )
    planned, rebalanced = pulls["as planned"], pulls["rebalanced"]
    assert [s for s, st in planned.per_source.items() if st.bytes] == ["s0"]  # the estimates' plan
    sent = {s: st.shards for s, st in rebalanced.per_source.items()}
    assert file_digest(rebalanced.path) == file_digest(data_path(origin, NAME))
    # 1 MiB shards: 4, 2 and 2 balance the links; each measured by one, and used beyond it
    assert sent["s1"] > 0 and sent["s2"] > 0 and sent["s1"] + sent["s2"] > 2, sent
    assert max(sent, key=sent.get) == "s0", sent
    assert rebalanced.steals >= 2
    assert rebalanced.seconds < planned.seconds, (rebalanced.seconds, planned.seconds)


async def test_a_joiner_whose_site_holds_the_state_sends_no_shard_across_the_wan(
    tmp_path: Path, origin: Path
) -> None:
    """s0 is at the joiner's site (8 MB/s); s1 and s2 are across a WAN (0.25 MB/s each), and
    estimated as they are. Told which source is at its site (``nearby``), the pull leaves the
    WAN out: one 1 MiB shard there takes 4 s, four times the whole pull from s0. The same pull
    without sites lets each take one shard to measure its link, and waits for both."""
    estimates = {"s0": 8e6, "s1": 2.5e5, "s2": 2.5e5}
    async with LocalCluster(tmp_path / "cluster") as cluster:
        urls = await start_sources(cluster, tmp_path, origin, NAME, 3, [8, 0.25, 0.25])
        async with aiohttp.ClientSession() as session:
            pulls = {}
            for label, nearby in (("no sites", frozenset()), ("site known", frozenset({"s0"}))):
                puller = Puller(session, cluster.secret, "joiner", tmp_path / label, NAME, nearby=nearby)
                pulls[label] = await puller.pull(
                    [Source(s, bps, 0.002) for s, bps in estimates.items()], urls
                )
    blind, known = pulls["no sites"], pulls["site known"]
    for pull in (blind, known):
        assert file_digest(pull.path) == file_digest(data_path(origin, NAME))
    assert [s for s, st in known.per_source.items() if st.bytes] == ["s0"], known.per_source
    assert blind.per_source["s1"].bytes > 0 and blind.per_source["s2"].bytes > 0, blind.per_source
    assert known.seconds < blind.seconds, (known.seconds, blind.seconds)


async def test_source_killed_mid_transfer(tmp_path: Path, origin: Path) -> None:
    async with LocalCluster(tmp_path / "cluster") as cluster:
        urls = await start_sources(cluster, tmp_path, origin, NAME, 3, [4, 4, 4])
        killed = []

        def progress(done: int, total: int) -> None:
            if not killed and done >= total / 3:
                cluster.kill("s0")
                killed.append(done)

        result = await _pull(cluster, urls, tmp_path, progress=progress, stall_s=1.0)
    assert killed, "the kill never happened"
    assert result.per_source["s0"].failed
    assert result.replans >= 1
    assert file_digest(result.path) == file_digest(data_path(origin, NAME))


async def test_corrupted_shards_are_refetched(tmp_path: Path, origin: Path) -> None:
    async with LocalCluster(tmp_path / "cluster") as cluster:
        urls = await start_sources(cluster, tmp_path, origin, NAME, 2, [8, 8], corrupt=frozenset({"s1"}))
        result = await _pull(cluster, urls, tmp_path)
    assert result.refetched >= 1
    assert result.per_source["s1"].failed == "sent corrupted shards"
    assert file_digest(result.path) == file_digest(data_path(origin, NAME))


async def _tampering_proxy(target: str, mangle):
    """A man in the middle that forwards GETs to ``target`` and mangles manifest bodies."""

    async def handler(request: web.Request) -> web.Response:
        async with (
            aiohttp.ClientSession() as session,
            session.get(target + request.path_qs, headers=request.headers) as upstream,
        ):
            body = await upstream.read()
            headers = {k: v for k, v in upstream.headers.items() if k.startswith("X-Chaos")}
        if request.path.endswith("/manifest"):
            body = mangle(body)
        return web.Response(body=body, status=upstream.status, headers=headers)

    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    "mangle",
    [lambda b: b.replace(b'"step":100', b'"step":999'), lambda b: b[: len(b) // 2]],
    ids=["tampered", "truncated"],
)
async def test_manifest_changed_in_transit_is_refused(tmp_path: Path, origin: Path, mangle) -> None:
    async with LocalCluster(tmp_path / "cluster") as cluster:
        urls = await start_sources(cluster, tmp_path, origin, NAME, 1)
        runner, proxy = await _tampering_proxy(urls["s0"], mangle)
        try:
            urls["s0"] = proxy
            with pytest.raises(TransferError, match="MAC mismatch"):
                await _pull(cluster, urls, tmp_path)
        finally:
            await runner.cleanup()


async def test_truncated_manifest_at_the_source_is_refused(tmp_path: Path, origin: Path) -> None:
    async with LocalCluster(tmp_path / "cluster") as cluster:
        urls = await start_sources(cluster, tmp_path, origin, NAME, 1)
        path = tmp_path / "s0" / manifest_path(origin, NAME).name
        raw = path.read_bytes()
        path.unlink()  # a hard link: replace, do not write through to the origin
        path.write_bytes(raw[: len(raw) - 7])
        with pytest.raises(InputError, match="manifest"):
            await _pull(cluster, urls, tmp_path)


async def test_manifest_mac_is_checked(tmp_path: Path, origin: Path) -> None:
    async with LocalCluster(tmp_path / "cluster") as cluster:
        urls = await start_sources(cluster, tmp_path, origin, NAME, 1)
        async with aiohttp.ClientSession() as session:
            wrong = Puller(session, b"an-entirely-different-secret", "joiner", tmp_path / "j", NAME)
            with pytest.raises(TransferError, match="manifest"):
                await wrong.fetch_manifest(urls)


async def test_shard_server_requires_auth_and_plain_names(tmp_path: Path, origin: Path) -> None:
    async with LocalCluster(tmp_path / "cluster") as cluster:
        urls = await start_sources(cluster, tmp_path, origin, NAME, 1)
        url = urls["s0"]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}/v1/snapshots/{NAME}/manifest") as response:
                assert response.status == 401
            for bad in ("..%2F..%2Fetc%2Fpasswd", "a..b%2Fc"):
                path = f"/v1/snapshots/{bad}/manifest"
                headers = signed_headers(cluster.secret, "GET", path, b"", time.time_ns(), "joiner")
                async with session.get(url + path, headers=headers) as response:
                    assert response.status in (400, 401, 404)
            path = f"/v1/snapshots/{NAME}/shards?start=0&count=100000"
            headers = signed_headers(cluster.secret, "GET", path, b"", time.time_ns(), "joiner")
            async with session.get(url + path, headers=headers) as response:
                assert response.status == 416
            # a snapshot retired between its manifest and its data (see retire_snapshots)
            data_path(tmp_path / "s0", NAME).unlink()
            path = f"/v1/snapshots/{NAME}/shards?start=0&count=1"
            headers = signed_headers(cluster.secret, "GET", path, b"", time.time_ns(), "joiner")
            async with session.get(url + path, headers=headers) as response:
                assert response.status == 404 and "no snapshot" in await response.text()


async def test_a_baseline_split_replaces_the_planner_in_the_puller_and_in_a_sidecar(
    tmp_path: Path, origin: Path
) -> None:
    async with LocalCluster(tmp_path / "cluster") as cluster:
        urls = await start_sources(cluster, tmp_path, origin, NAME, 3, [8, 8, 8])
        result = await _pull(cluster, urls, tmp_path, split=single_source)
        # the lab's baseline sidecar: the product's sidecar, started with the split passed in
        baseline = await cluster.start("b0", seed=True, program=sidecar_command("equal-split"))
        assert (await cluster.view("b0"))["view"]["members"] == ["b0"] and baseline.url
    assert file_digest(result.path) == file_digest(data_path(origin, NAME))
    assert [sid for sid, stats in result.per_source.items() if stats.bytes] == ["s0"]


async def test_the_local_pull_api_takes_the_sources_at_the_joiners_site(tmp_path: Path, origin: Path) -> None:
    """The trainer's pull request through its sidecar: ``nearby`` must name sources of the
    pull (else 400 naming it, and nothing is pulled); named right, the pull runs with it."""
    names = ["s0", "s1", "joiner"]
    for name in names:
        (tmp_path / name).mkdir()
    for name in names[:2]:
        os.link(data_path(origin, NAME), data_path(tmp_path / name, NAME))
        os.link(manifest_path(origin, NAME), manifest_path(tmp_path / name, NAME))
    extra = lambda name: ["--snapshot-dir", str(tmp_path / name), "--trainer-lease-s", "0"]  # noqa: E731
    async with LocalCluster(tmp_path / "cluster") as cluster:
        await cluster.start("s0", seed=True, extra=extra("s0"))
        await cluster.start("s1", extra=extra("s1"))
        joiner = await cluster.start("joiner", extra=extra("joiner"))
        await cluster.wait_agreed(set(names))
        client = SidecarClient(joiner.local_url)
        for nearby, wrong in ((["s9"], "s9"), (["joiner"], "joiner")):
            refused = await asyncio.to_thread(client.pull, NAME, ["s0", "s1"], nearby)
            assert refused["error"] == 400 and "nearby" in refused["message"] and wrong in refused["message"]
            assert not data_path(tmp_path / "joiner", NAME).exists()
        pulled = await asyncio.to_thread(client.pull, NAME, ["s0", "s1"], ["s1"])
    assert "error" not in pulled, pulled
    assert file_digest(data_path(tmp_path / "joiner", NAME)) == file_digest(data_path(origin, NAME))
