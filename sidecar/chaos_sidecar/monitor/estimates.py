"""Per-peer link estimates: a pure table, updated by probes and by transfers."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LinkEstimate:
    bandwidth_Bps: float | None = None
    rtt_s: float | None = None
    samples: int = 0
    version: int = 0


@dataclass
class EstimateTable:
    """EWMA per peer; ``alpha`` weighs the newest sample. ``version`` grows on every update,
    so a gossiped copy can be merged by keeping the higher version."""

    alpha: float = 0.5
    links: dict[str, LinkEstimate] = field(default_factory=dict)

    def observe_bandwidth(self, peer: str, bps: float) -> None:
        e = self.links.setdefault(peer, LinkEstimate())
        e.bandwidth_Bps = (
            bps if e.bandwidth_Bps is None else self.alpha * bps + (1 - self.alpha) * e.bandwidth_Bps
        )
        e.samples += 1
        e.version += 1

    def observe_rtt(self, peer: str, seconds: float) -> None:
        e = self.links.setdefault(peer, LinkEstimate())
        e.rtt_s = seconds if e.rtt_s is None else self.alpha * seconds + (1 - self.alpha) * e.rtt_s
        e.version += 1

    def bandwidth(self, peer: str, default: float) -> float:
        e = self.links.get(peer)
        return default if e is None or e.bandwidth_Bps is None else e.bandwidth_Bps
