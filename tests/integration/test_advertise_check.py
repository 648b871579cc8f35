"""A sidecar started with an --advertise URL that does not reach it says so at start, naming
the flag and the address, and shows 0 on chaostrain_advertise_reachable, while it keeps
running; one whose --advertise is answered by another sidecar says that instead (each sidecar
answers /healthz with its own random instance id). The control: a sidecar at its default
address reaches itself (1) and says nothing."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

import scrape
from chaos_lab.localcluster import LocalCluster
from chaos_sidecar.eventlog import Kind
from polling import line_in

pytestmark = pytest.mark.timeout(120)
DEADLINE_S = 30.0
GAUGE = "chaostrain_advertise_reachable"


def closed_port() -> int:
    """A port on loopback the OS just gave out and nothing listens on any more."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_an_advertised_address_that_does_not_reach_the_sidecar_is_said_and_shown(
    tmp_path: Path,
) -> None:
    nowhere = f"http://127.0.0.1:{closed_port()}"
    async with LocalCluster(tmp_path) as cluster:
        session = cluster.session
        assert session is not None
        control = await cluster.start("n0", seed=True)
        await scrape.wait_metric(session, control.url, GAUGE, lambda v: v == 1, DEADLINE_S)

        lost = await cluster.start("n1", seed=True, extra=["--advertise", nowhere])
        line = await line_in(
            tmp_path / "n1.stderr",
            rf"^chaos-train sidecar: warning: --advertise {re.escape(nowhere)} does not reach this sidecar "
            r"\((.+)\): peers given it will never hear this node",
            DEADLINE_S,
        )
        assert "Connect" in line[1] or "refused" in line[1], line[0]
        # it keeps running and serving on the port it bound (the ready file's port)
        port = json.loads((tmp_path / "n1.ready").read_text())["port"]
        assert await scrape.metric(session, f"http://127.0.0.1:{port}", GAUGE) == 0
        assert lost.process.poll() is None

        impostor = await cluster.start("n2", seed=True, extra=["--advertise", control.url])
        await line_in(
            tmp_path / "n2.stderr",
            rf"^chaos-train sidecar: warning: --advertise {re.escape(control.url)} is answered by another "
            r"process \(instance [0-9a-f]{32}\), not this sidecar",
            DEADLINE_S,
        )
        assert impostor.process.poll() is None
        for node in ("n1", "n2"):
            records = [r for r in cluster.read_logs() if r.node == node and r.kind is Kind.ADVERTISE_CHECK]
            assert [r["result"] for r in records] == [("unreachable" if node == "n1" else "another_process")]
        assert "warning" not in (tmp_path / "n0.stderr").read_text()
