"""Monitor scenario: a healthy group under CPU load must not suspect anyone.

Starts N sidecars (heartbeat 0.1 s, failure timeout 0.5 s) plus one busy-loop process per core,
lets them run for ``--duration`` seconds, then counts suspicions ("lost" observations) and view
changes from the event logs and reports each node's monitoring traffic (bytes per second it
sent on its peer streams). A healthy run has zero of both.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from chaos_lab.localcluster import LocalCluster
from chaos_sidecar.cliutil import positive_float, positive_int
from chaos_sidecar.eventlog import Kind
from chaos_sidecar.membership.machine import Settings


async def measure(nodes: int, duration_s: float, workdir: Path) -> dict[str, Any]:
    burners = []
    async with LocalCluster(workdir, settings=Settings(0.1, 0.5, 0.05)) as cluster:
        await cluster.start("n0", seed=True)
        for i in range(1, nodes):
            await cluster.start(f"n{i}")
        members = {f"n{i}" for i in range(nodes)}
        formed = await cluster.wait_agreed(members, 30)
        before = await cluster.views()
        for _ in range(os.cpu_count() or 1):
            burners.append(subprocess.Popen([sys.executable, "-c", "while True: pass"]))
        started = time.time()
        try:
            await asyncio.sleep(duration_s)  # the measurement window itself, not synchronisation
        finally:
            for b in burners:
                b.kill()
                b.wait()
        after = await cluster.views()
        records = [r for r in cluster.read_logs() if r.t >= started]
    lost = [r for r in records if r.kind is Kind.OBSERVED and r["change"][0] == "lost"]
    changes = [r for r in records if r.kind is Kind.INSTALLED]
    traffic = {
        n: round((after[n]["traffic"]["sent_bytes"] - before[n]["traffic"]["sent_bytes"]) / duration_s)
        for n in sorted(members)
        if after.get(n) and before.get(n)
    }
    final_epochs = {v["view"]["epoch"] for v in after.values() if v}
    return {
        "scenario": "monitor",
        "nodes": nodes,
        "duration_s": duration_s,
        "cpu_burners": len(burners),
        "false_suspicions": len(lost),
        "view_changes": len(changes),
        "epoch_unchanged": final_epochs == {formed["view"]["epoch"]},
        "traffic_Bps_per_node": traffic,
        "failed": bool(lost or changes),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nodes", type=positive_int, default=8, help="sidecar processes")
    parser.add_argument("--duration", type=positive_float, default=60.0, help="seconds to watch")


def run_from_args(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="chaos-monitor-") as tmp:
        return asyncio.run(measure(args.nodes, args.duration, Path(tmp)))
