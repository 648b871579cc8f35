"""Real sidecar processes on this machine: start, kill, partition, observe.

Used by ``chaos-train bench --scenario agreement``, the integration tests and the local
job. Each node is a separate ``chaos-train sidecar`` process bound to port 0 on loopback;
its URL comes back through a ready file. Waiting is always for a condition (a view, a log
line), with a deadline.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from chaos_sidecar import eventlog
from chaos_sidecar.commands.sidecar import wait_ready
from chaos_sidecar.errors import ChaosError
from chaos_sidecar.eventlog import Record
from chaos_sidecar.membership.machine import Settings

# Polling the nodes costs them CPU; latencies are measured from their logs, not from polls.
POLL_S = 0.025


class ClusterError(ChaosError):
    """A local cluster did not reach the expected state in time."""


@dataclass
class Node:
    node_id: str
    process: subprocess.Popen
    url: str = ""
    local_url: str = ""  # the local API (differs from url when the peer port speaks TLS)
    log_path: Path | None = None
    alive: bool = True


@dataclass
class LocalCluster:
    workdir: Path
    settings: Settings = field(default_factory=lambda: Settings(0.1, 0.5, 0.05))
    secret: bytes = field(default_factory=lambda: secrets.token_hex(24).encode())
    nodes: dict[str, Node] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = self.workdir.resolve()  # each sidecar runs in a directory of its own
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.secret_file = self.workdir / "join-secret"
        self.secret_file.write_bytes(self.secret)
        os.chmod(self.secret_file, 0o600)
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LocalCluster:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        if self.session is not None:
            await self.session.close()

    # --- processes --------------------------------------------------------------------------

    async def start(
        self,
        node_id: str,
        *,
        seed: bool = False,
        contacts: list[str] | None = None,
        extra: list[str] | None = None,
        wrap=None,
        host: str = "127.0.0.1",
        directory: Path | None = None,
        program: list[str] | None = None,
    ) -> Node:
        """Start ``node_id``'s sidecar. Its files (ready file, event log, stderr) go to the
        cluster's directory, or to ``directory`` (with a copy of the join secret): a node that
        shares nothing on disk with the others. ``program`` runs the sidecar instead of
        ``chaos-train sidecar`` (with the same arguments): a baseline's, say."""
        secret_file = self.secret_file
        if directory is not None:
            directory = directory.resolve()
            directory.mkdir(parents=True, exist_ok=True)
            secret_file = directory / "join-secret"
            secret_file.write_bytes(self.secret)
            os.chmod(secret_file, 0o600)
        where = directory or self.workdir
        ready = where / f"{node_id}.ready"
        ready.unlink(missing_ok=True)
        log = where / f"{node_id}.events.jsonl"
        if contacts is None:
            contacts = [n for n, node in self.nodes.items() if node.alive]
        peers = ",".join(f"{n}={self.nodes[n].url}" for n in contacts)
        s = self.settings
        cmd = [
            *(program or [sys.executable, "-m", "chaos_sidecar.cli", "sidecar"]),
            "--node-id", node_id, "--port", "0", "--secret-file", str(secret_file),
            "--ready-file", str(ready), "--log", str(log), "--fault-injection",
            "--state-dir", str(where / "state" / node_id),
            "--heartbeat-s", str(s.heartbeat_interval), "--suspect-timeout-s", str(s.suspect_timeout),
            "--retry-s", str(s.retry_interval),
        ]  # fmt: skip
        cmd += ["--seed"] if seed else ["--peers", peers]
        cmd += ["--host", host, *(extra or [])]
        if wrap is not None:
            cmd = wrap(cmd)
        stderr = (where / f"{node_id}.stderr").open("ab")
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, cwd=where)
        node = Node(node_id, process, log_path=log)
        self.nodes[node_id] = node
        try:
            listening = await asyncio.to_thread(wait_ready, ready, process)
        except ChaosError as exc:
            raise ClusterError(f"{node_id}: {exc}; see {where}/{node_id}.stderr") from None
        node.url, node.local_url = listening.url, listening.local_url
        return node

    def kill(self, node_id: str) -> None:
        node = self.nodes[node_id]
        node.process.send_signal(signal.SIGKILL)
        node.process.wait()
        node.alive = False

    def terminate(self, node_id: str) -> None:
        self.nodes[node_id].process.send_signal(signal.SIGTERM)

    def close(self) -> None:
        for node in self.nodes.values():
            if node.process.poll() is None:
                node.process.kill()
                node.process.wait()
            node.alive = False

    def live(self) -> list[str]:
        return [n for n, node in self.nodes.items() if node.alive and node.process.poll() is None]

    # --- local API --------------------------------------------------------------------------

    async def view(self, node_id: str) -> dict[str, Any] | None:
        assert self.session is not None
        try:
            async with self.session.get(self.nodes[node_id].local_url + "/local/view") as response:
                return await response.json()
        except (TimeoutError, aiohttp.ClientError, OSError):
            return None

    async def views(self, nodes: list[str] | None = None) -> dict[str, dict[str, Any] | None]:
        nodes = self.live() if nodes is None else nodes
        results = await asyncio.gather(*(self.view(n) for n in nodes))
        return dict(zip(nodes, results, strict=True))

    async def leave(self, node_id: str) -> None:
        assert self.session is not None
        async with self.session.post(self.nodes[node_id].local_url + "/local/leave") as response:
            response.raise_for_status()

    async def block(self, a: str, b: str, *, unblock: bool = False) -> None:
        """Cut (or restore) the link between ``a`` and ``b`` in both directions."""
        assert self.session is not None
        key = "unblock" if unblock else "block"
        for x, y in ((a, b), (b, a)):
            async with self.session.post(
                self.nodes[x].local_url + "/local/faults", json={key: [y]}
            ) as response:
                response.raise_for_status()

    async def set_upload_limit(self, node: str, rate_mbps: float | None) -> None:
        """Slow down (or restore, with None) every link out of ``node``."""
        assert self.session is not None
        url = self.nodes[node].local_url + "/local/faults"
        async with self.session.post(url, json={"upload_limit_mbps": rate_mbps}) as response:
            response.raise_for_status()

    # --- waiting ----------------------------------------------------------------------------

    async def wait_members(self, members: set[str], timeout: float = 20.0) -> None:
        """Wait until every node in ``members`` says it is a member (``/readyz`` on its peer
        port: reachable from outside the node, unlike the local API)."""
        assert self.session is not None

        async def ready(node: str) -> bool:
            try:
                async with self.session.get(self.nodes[node].url + "/readyz") as response:
                    return response.status == 200
            except (TimeoutError, aiohttp.ClientError, OSError):
                return False

        deadline = time.monotonic() + timeout
        while not all(await asyncio.gather(*(ready(n) for n in sorted(members)))):
            if time.monotonic() > deadline:
                raise ClusterError(f"{sorted(members)} were not all members within {timeout}s")
            await asyncio.sleep(POLL_S)

    async def _until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise ClusterError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(POLL_S)

    async def wait_agreed(
        self, members: set[str], timeout: float = 20.0, *, check: Callable[[dict], bool] | None = None
    ) -> dict[str, Any]:
        """Wait until every live node in ``members`` is a member of one view with exactly ``members``."""
        deadline = time.monotonic() + timeout
        while True:
            views = await self.views(sorted(members))
            agreed = (
                all(
                    v and v["status"] == "member" and v["view"] and set(v["view"]["members"]) == members
                    for v in views.values()
                )
                and len({v["view"]["epoch"] for v in views.values()}) == 1
            )
            if agreed and (check is None or all(check(v) for v in views.values())):
                return next(iter(views.values()))  # type: ignore[return-value]
            if time.monotonic() > deadline:
                summary = {
                    n: (v["status"], v["view"]["epoch"], v["view"]["members"], v["topology"])
                    if v and v["view"]
                    else v
                    for n, v in views.items()
                }
                raise ClusterError(f"no agreement on {sorted(members)} within {timeout}s: {summary}")
            await asyncio.sleep(POLL_S)

    def read_logs(self) -> list[Record]:
        return eventlog.read(node.log_path for node in self.nodes.values() if node.log_path)
