"""Per-peer link estimates: a pure table, updated by probes and by transfers, read by the
transfer planner. It also owns what the planner assumes about a link nobody measured yet."""

from __future__ import annotations

from dataclasses import dataclass, field

# A link never measured (its probe failed) is assumed fast, 100 MB/s: the puller measures
# every source while it pulls and moves pieces off a source that turns out slow, whereas a
# pessimistic guess would leave a good source unused for the whole transfer.
UNMEASURED_BANDWIDTH_BPS = 1e8
# Each piece is one request, so it costs one round trip before its first byte. Unmeasured:
# 1 ms, a LAN's round trip. Never below 0.5 ms, so the planner does not cut a state into
# more pieces than the requests' own handling time justifies.
UNMEASURED_REQUEST_OVERHEAD_S = 0.001
MIN_REQUEST_OVERHEAD_S = 0.0005


@dataclass
class LinkEstimate:
    bandwidth_Bps: float | None = None
    rtt_s: float | None = None  # smoothed: what the link answers in now, queueing included
    min_rtt_s: float | None = None  # lowest seen: the link's own latency, without queueing
    samples: int = 0


@dataclass
class EstimateTable:
    """EWMA per peer; ``alpha`` weighs the newest sample."""

    alpha: float = 0.5
    links: dict[str, LinkEstimate] = field(default_factory=dict)

    def observe_bandwidth(self, peer: str, bps: float) -> None:
        e = self.links.setdefault(peer, LinkEstimate())
        e.bandwidth_Bps = (
            bps if e.bandwidth_Bps is None else self.alpha * bps + (1 - self.alpha) * e.bandwidth_Bps
        )
        e.samples += 1

    def observe_rtt(self, peer: str, seconds: float) -> None:
        e = self.links.setdefault(peer, LinkEstimate())
        e.rtt_s = seconds if e.rtt_s is None else self.alpha * seconds + (1 - self.alpha) * e.rtt_s
        e.min_rtt_s = seconds if e.min_rtt_s is None else min(e.min_rtt_s, seconds)

    def bandwidth(self, peer: str) -> float:
        e = self.links.get(peer)
        return UNMEASURED_BANDWIDTH_BPS if e is None or e.bandwidth_Bps is None else e.bandwidth_Bps

    def request_overhead_s(self, peer: str) -> float:
        """Seconds one request to ``peer`` costs beyond its bytes: the lowest round trip seen.
        Not the smoothed one: probes run while the group still trains, so they wait behind
        gradients queued on the link. A blocking join pulls while the members wait at a step
        boundary, with that queue gone; under an overlap join the gradients' share of the link
        is in the bandwidth estimate already. Counting the queue again per piece made the
        planner leave out slower sources that would have shortened the transfer."""
        e = self.links.get(peer)
        if e is None or e.min_rtt_s is None:
            return UNMEASURED_REQUEST_OVERHEAD_S
        return max(e.min_rtt_s, MIN_REQUEST_OVERHEAD_S)
