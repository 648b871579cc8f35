"""A joiner's side of a snapshot transfer, without the web app: link estimates -> the planning
instance -> the pull -> what the pull measured back into the estimates and the metrics.

The local API hands it the trainer's requests (which snapshot, from which members); it owns
the sidecar's :class:`~chaos_sidecar.monitor.estimates.EstimateTable`, probes the links it
does not know and warms them while the group admits this node, so the transfer does not wait
for probes on its critical path.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chaos_sidecar.metrics import SidecarMetrics
from chaos_sidecar.monitor.estimates import EstimateTable, LinkEstimate
from chaos_sidecar.monitor.probe import probe_bandwidth, round_trip
from chaos_sidecar.planning.model import Source
from chaos_sidecar.transfer.puller import PieceSplit, Puller, PullResult, plan_pieces

WARM_WAIT_S = 5.0  # a request waits this long for the links being measured since admission
WARM_DEADLINE_S = 30.0  # warming gives up when this node is not admitted within this long
WARM_POLL_S = 0.02  # how often warming looks whether the view admitted this node
PING_TIMEOUT_S = 1.0  # a source that does not answer a round trip this fast keeps its estimate


class TransferService:
    """``session`` is the sidecar's peer client session (set once it is open): probes and
    pulls go over the authenticated peer API. ``split`` divides a snapshot over its sources:
    the shard planner, or what the sidecar's embedder passes in (the lab's baselines)."""

    def __init__(
        self,
        node_id: str,
        secret: Any,
        snapshot_dir: Path | None,
        metrics: SidecarMetrics,
        split: PieceSplit = plan_pieces,
    ) -> None:
        self.node_id = node_id
        self.split = split
        self.secret = secret
        self.snapshot_dir = snapshot_dir
        self.metrics = metrics
        self.estimates = EstimateTable()
        self.session: Any = None
        self._warming: set[asyncio.Task] = set()

    # --- estimates ------------------------------------------------------------------------------

    async def probe_unknown(self, peers: dict[str, str]) -> None:
        """Measure the links from ``peers`` (id -> URL) that the estimates do not know."""
        table = self.estimates
        unknown = {
            p: url for p, url in peers.items() if p not in table.links or table.links[p].bandwidth_Bps is None
        }
        probes = await asyncio.gather(
            *(probe_bandwidth(self.session, url, self.secret, self.node_id) for url in unknown.values()),
            return_exceptions=True,
        )
        for peer, probe in zip(unknown, probes, strict=True):
            if not isinstance(probe, BaseException):
                table.observe_bandwidth(peer, probe[0])
                table.observe_rtt(peer, probe[1])

    def warm_up(self, admitted_peers: Callable[[], dict[str, str] | None]) -> None:
        """A joiner pulls its state right after admission: measure its links to the members
        while the group admits it and reaches a step boundary. ``admitted_peers`` gives the
        other members (id -> URL) once the view has this node among them, else None."""

        async def warm() -> None:
            deadline = time.monotonic() + WARM_DEADLINE_S
            while time.monotonic() < deadline:
                peers = admitted_peers()
                if peers:
                    await self.probe_unknown(peers)
                    return
                await asyncio.sleep(WARM_POLL_S)

        task = asyncio.create_task(warm())
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)

    async def links(self, peers: dict[str, str]) -> dict[str, LinkEstimate]:
        """The estimated links from ``peers`` (probed if unknown)."""
        await self._measured(peers)
        return {peer: self.estimates.links[peer] for peer in peers if peer in self.estimates.links}

    async def _measured(self, peers: dict[str, str]) -> None:
        if self._warming:  # measured while the group admitted us: wait rather than probe twice
            await asyncio.wait(self._warming, timeout=WARM_WAIT_S)
        await self.probe_unknown(peers)

    # --- the transfer ---------------------------------------------------------------------------

    async def pull(
        self, name: str, sources: dict[str, str], nearby: frozenset[str] = frozenset()
    ) -> PullResult:
        """Snapshot ``name`` from ``sources`` (member id -> URL) into the snapshot directory,
        planned on the estimates; ``nearby``: the sources at this node's site (see Puller).
        Raises TransferError or InputError."""
        assert self.snapshot_dir is not None and self.session is not None
        await self._measured(sources)
        await self._round_trips(sources)
        table = self.estimates
        planned = [Source(sid, table.bandwidth(sid), table.request_overhead_s(sid)) for sid in sources]
        puller = Puller(self.session, self.secret, self.node_id, self.snapshot_dir, name,
                        on_throughput=table.observe_bandwidth, split=self.split, nearby=nearby)  # fmt: skip
        result = await puller.pull(planned, sources)
        self._publish(result)
        return result

    async def _round_trips(self, sources: dict[str, str]) -> None:
        """One round trip to each source, just before planning. The probes ran while the group
        still trained, so their first bytes waited behind the gradients queued on each link; a
        blocking join pulls while the members wait at a step boundary, with those queues gone.
        A piece costs the planner one round trip (the lowest seen), so a queued one alone would
        make it cut the state into fewer pieces, from fewer sources, than the links allow."""

        async def timed(url: str) -> float:
            return await asyncio.wait_for(round_trip(self.session, url), PING_TIMEOUT_S)

        rtts = await asyncio.gather(*(timed(url) for url in sources.values()), return_exceptions=True)
        for sid, rtt in zip(sources, rtts, strict=True):
            if not isinstance(rtt, BaseException):
                self.estimates.observe_rtt(sid, rtt)

    def _publish(self, result: PullResult) -> None:
        metrics = self.metrics
        for sid, stats in result.per_source.items():
            metrics.transfer_bytes.labels(sid).inc(stats.bytes)
            metrics.transfer_seconds.labels(sid).inc(stats.seconds)
        metrics.replans.inc(result.replans)
        for peer, estimate in self.estimates.links.items():
            if estimate.bandwidth_Bps is not None:
                metrics.bandwidth.labels(peer).set(estimate.bandwidth_Bps)
            if estimate.rtt_s is not None:
                metrics.rtt.labels(peer).set(estimate.rtt_s)

    def close(self) -> None:
        for task in self._warming:
            task.cancel()
