"""What the sidecar's app holds, by key: shared by its peer API, local API and ops routes."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from chaos_sidecar.adapters.clock_report import ClockReport
from chaos_sidecar.adapters.rendezvous import TrainerRendezvous
from chaos_sidecar.adapters.runtime import MembershipRuntime
from chaos_sidecar.adapters.shard_server import ShardServer
from chaos_sidecar.config import SidecarConfig
from chaos_sidecar.metrics import SidecarMetrics
from chaos_sidecar.security import Verifier
from chaos_sidecar.transfer.service import TransferService


@dataclass
class TrainerLease:
    """When the trainer last used the local API, and how many of its requests are open."""

    last: float = 0.0
    open: int = 0

    def expired(self, limit_s: float, now: float) -> bool:
        return self.last > 0 and self.open == 0 and now - self.last > limit_s


CONFIG = web.AppKey("config", SidecarConfig)
RUNTIME = web.AppKey("runtime", MembershipRuntime)
VERIFIER = web.AppKey("verifier", Verifier)
METRICS = web.AppKey("metrics", SidecarMetrics)
JOIN_REQUESTED = web.AppKey("join_requested", list)  # [monotonic time] once the trainer asked
TRANSFERS = web.AppKey("transfers", TransferService)
STREAMS = web.AppKey("streams", set)  # open inbound peer streams, closed on shutdown
LEASE = web.AppKey("lease", TrainerLease)
SHARDS = web.AppKey("shards", ShardServer)
RENDEZVOUS = web.AppKey("rendezvous", TrainerRendezvous)
CLOCKS = web.AppKey("clocks", ClockReport)
ADVERTISE = web.AppKey("advertise", str)  # the URL peers are given for this sidecar
INSTANCE = web.AppKey("instance", str)  # this process's random id, on /healthz


def reject(app: web.Application, reason: str) -> None:
    """Count a refused peer request by reason."""
    app[METRICS].rejected.labels(reason).inc()
