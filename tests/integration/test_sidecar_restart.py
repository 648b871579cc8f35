"""A sidecar killed with SIGKILL and started again with the same node id: with its durable
state (same address) it recovers it; without a usable one it rejoins as a new incarnation."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest

from chaos_lab.localcluster import LocalCluster
from chaos_sidecar.adapters.state_store import StateStore
from chaos_sidecar.eventlog import Kind, Record

pytestmark = pytest.mark.timeout(120)


def records(cluster: LocalCluster, node: str, kind: Kind) -> list[Record]:
    return [r for r in cluster.read_logs() if r.node == node and r.kind is kind]


async def test_a_killed_sidecar_recovers_its_state_or_rejoins_as_a_new_incarnation(tmp_path) -> None:
    async with LocalCluster(tmp_path) as cluster:
        await cluster.start("n0", seed=True)
        await cluster.start("n1")
        await cluster.start("n2")
        members = {"n0", "n1", "n2"}
        agreed = await cluster.wait_agreed(members, 30)
        store = StateStore(tmp_path / "state" / "n1", "n1")
        saved, _ = store.load()
        assert saved.view is not None and saved.view.epoch == agreed["view"]["epoch"]

        # back at the same address (the port the OS gave it before): it recovers its state
        port = urlparse(cluster.nodes["n1"].url).port
        cluster.kill("n1")
        await cluster.start("n1", extra=["--port", str(port)])
        view = await cluster.wait_agreed(members, 30)
        assert [r["incarnation"] for r in records(cluster, "n1", Kind.RECOVERED)] == [saved.incarnation]
        listed = dict(zip(view["view"]["members"], view["view"]["incarnations"], strict=True))
        assert listed["n1"] == saved.incarnation

        # back at another address: the others could not reach the old one, so it starts afresh
        cluster.kill("n1")
        await cluster.start("n1")
        view = await cluster.wait_agreed(members, 30)
        (lost,) = records(cluster, "n1", Kind.STATE_LOST)
        listed = dict(zip(view["view"]["members"], view["view"]["incarnations"], strict=True))
        assert listed["n1"] == lost["incarnation"] > saved.incarnation
        assert store.load()[0].incarnation == lost["incarnation"]
