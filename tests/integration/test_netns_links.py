"""Real shaped links: a source in its own network namespace behind tc tbf."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest

from chaos_lab import netns
from chaos_lab.benchmarks.transfer import make_state
from chaos_lab.localcluster import LocalCluster
from chaos_sidecar.eventlog import Kind
from chaos_sidecar.monitor.probe import probe_bandwidth
from chaos_sidecar.planning.model import Source
from chaos_sidecar.transfer.puller import Puller
from chaos_sidecar.transfer.snapshot import data_path, file_digest

REASON = netns.unavailable()
pytestmark = [pytest.mark.skipif(REASON is not None, reason=f"netns: {REASON}"), pytest.mark.timeout(120)]


async def test_tc_shaped_sources_are_measured_and_pulled(tmp_path: Path) -> None:
    rates = [20e6, 10e6]
    make_state(tmp_path / "origin", "state", state_mb=8)
    with netns.Star(2, rates) as star:
        async with LocalCluster(tmp_path / "cluster") as cluster:
            urls = {}
            for i in range(2):
                node = await cluster.start(
                    f"s{i}", seed=True, host=star.ip(i), wrap=lambda cmd, i=i: star.wrap(i, cmd),
                    extra=["--snapshot-dir", str(tmp_path / "origin")],
                )  # fmt: skip
                urls[f"s{i}"] = node.url
            async with aiohttp.ClientSession() as session:
                estimated = []
                for (sid, url), rate in zip(urls.items(), rates, strict=True):
                    measured, _ = await probe_bandwidth(session, url, cluster.secret, "joiner")
                    # tc counts IP/TCP headers too: goodput sits a few percent under the rate
                    assert abs(measured / rate - 1) < 0.15, (sid, measured, rate)
                    estimated.append(Source(sid, measured))
                puller = Puller(session, cluster.secret, "joiner", tmp_path / "joiner", "state")
                result = await puller.pull(estimated, urls)
    assert file_digest(result.path) == file_digest(data_path(tmp_path / "origin", "state"))
    shares = {sid: s.bytes for sid, s in result.per_source.items()}
    assert shares["s0"] > shares["s1"]  # the faster link carried more


def _latest_views(cluster: LocalCluster) -> dict[str, tuple[int, frozenset[str], str]]:
    """Each node's newest installed view from its event log (the local API answers loopback
    only, and these nodes live in other namespaces)."""
    latest: dict[str, tuple[int, frozenset[str], str]] = {}
    for record in cluster.read_logs():
        if record.kind is Kind.INSTALLED:
            latest[record.node] = (record["epoch"], frozenset(record["members"]), record["status"])
    return latest


async def _until_agreed(cluster: LocalCluster, nodes: set[str], timeout: float = 60) -> int:
    """Wait until every node in ``nodes`` installed the same view, of exactly ``nodes``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        views = _latest_views(cluster)
        seen = {views.get(n) for n in nodes}
        if len(seen) == 1 and None not in seen:
            (view,) = seen
            if view[1] == nodes:
                return view[0]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no agreement on {sorted(nodes)}: {views}")
        await asyncio.sleep(0.05)


async def test_partition_between_namespaces(tmp_path: Path) -> None:
    """Five sidecars in five namespaces; blackhole routes cut {n3, n4} from {n0, n1, n2}. The
    majority side commits a view without the minority; the minority commits nothing; every
    installed epoch has one member list across all logs; after healing all five agree again."""
    with netns.Star(5, [None] * 5, routed=True, subnet=78) as star:
        async with LocalCluster(tmp_path / "cluster") as cluster:
            for i in range(5):
                await cluster.start(
                    f"n{i}", seed=i == 0, host=star.ip(i), wrap=lambda cmd, i=i: star.wrap(i, cmd)
                )
            everyone = {f"n{i}" for i in range(5)}
            before = await _until_agreed(cluster, everyone)
            star.partition([0, 1, 2], [3, 4])
            after = await _until_agreed(cluster, {"n0", "n1", "n2"})
            assert after > before
            views = _latest_views(cluster)
            for node in ("n3", "n4"):  # the minority commits nothing of its own
                assert views[node][0] == before, views[node]
            star.heal()
            await _until_agreed(cluster, everyone)
            installed: dict[int, set[frozenset[str]]] = {}
            for record in cluster.read_logs():
                if record.kind is Kind.INSTALLED:
                    installed.setdefault(record["epoch"], set()).add(frozenset(record["members"]))
    assert all(len(views) == 1 for views in installed.values()), installed


async def test_a_member_relays_between_two_that_cannot_reach_each_other(tmp_path: Path) -> None:
    """Four sidecars in four namespaces; blackhole routes cut n0-n3, then n1 is killed. n0 and
    n3 each reach two of the four directly: without relaying nothing could commit (round 4715
    of the chaos bench). n2 reaches both and relays, so {n0, n2, n3} agree on a view without
    n1 while the cut stays, and the topology table still shows n0-n3 down."""
    with netns.Star(4, [None] * 4, routed=True, subnet=79) as star:
        async with LocalCluster(tmp_path / "cluster") as cluster:
            for i in range(4):
                await cluster.start(
                    f"n{i}", seed=i == 0, host=star.ip(i), wrap=lambda cmd, i=i: star.wrap(i, cmd)
                )
            before = await _until_agreed(cluster, {"n0", "n1", "n2", "n3"})
            star.partition([0], [3])
            cluster.kill("n1")
            after = await _until_agreed(cluster, {"n0", "n2", "n3"}, timeout=30)
            assert after > before
            records = cluster.read_logs()
    topology = [r["down"] for r in records if r.kind is Kind.TOPOLOGY and r.node == "n0"]
    assert topology and ["n0", "n3"] in topology[-1], topology
    installed: dict[int, set[frozenset[str]]] = {}
    for record in records:
        if record.kind is Kind.INSTALLED:
            installed.setdefault(record["epoch"], set()).add(frozenset(record["members"]))
    assert all(len(views) == 1 for views in installed.values()), installed
