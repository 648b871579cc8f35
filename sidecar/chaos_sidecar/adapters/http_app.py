"""The sidecar's aiohttp application: the peer API (``peer_routes``), the local trainer API
(``local_routes``) and the ops endpoints (health, readiness, metrics), over one membership
runtime and one transfer service."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from prometheus_client import generate_latest

from chaos_sidecar.adapters.advertise_check import check_advertised
from chaos_sidecar.adapters.app_state import (
    ADVERTISE,
    CLOCKS,
    CONFIG,
    INSTANCE,
    JOIN_REQUESTED,
    LEASE,
    METRICS,
    RENDEZVOUS,
    RUNTIME,
    TRANSFERS,
    VERIFIER,
    TrainerLease,
    reject,
)
from chaos_sidecar.adapters.clock_report import ClockReport
from chaos_sidecar.adapters.local_routes import MIDDLEWARES, add_local_routes, watch_trainer
from chaos_sidecar.adapters.party_watch import PartyFilesWatch
from chaos_sidecar.adapters.peer_routes import add_peer_routes
from chaos_sidecar.adapters.peer_stream import PeerLinks
from chaos_sidecar.adapters.rendezvous import TrainerRendezvous
from chaos_sidecar.adapters.runtime import MembershipRuntime
from chaos_sidecar.adapters.secret_watch import warn_if_loose, watch_secret
from chaos_sidecar.adapters.state_store import StateStore, initial_state
from chaos_sidecar.config import SidecarConfig, client_tls
from chaos_sidecar.eventlog import EventLog
from chaos_sidecar.metrics import SidecarMetrics
from chaos_sidecar.protocol.messages import MAX_MESSAGE_BYTES
from chaos_sidecar.security import RotatingSecret, Verifier, read_refusal
from chaos_sidecar.transfer.puller import PieceSplit, plan_pieces
from chaos_sidecar.transfer.service import TransferService


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(request.app[METRICS].registry), content_type="text/plain")


async def healthz(request: web.Request) -> web.Response:
    # instance: this process's random id, so a sidecar checking its advertised URL knows the
    # answer is its own (adapters.advertise_check)
    return web.json_response({"ok": True, "instance": request.app[INSTANCE]})


async def readyz(request: web.Request) -> web.Response:
    member = request.app[RUNTIME].state.is_member
    return web.json_response({"member": member}, status=200 if member else 503)


async def _runtime_ctx(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    timeout = aiohttp.ClientTimeout(total=max(1.0, app[CONFIG].membership.suspect_timeout))
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=16, ssl=client_tls(app[CONFIG]) or True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        config = app[CONFIG]

        def refused(headers, signature: str, sent_ns: int, answered_ns: int) -> None:
            refusal = read_refusal(config.secret, headers, signature, answered_ns)
            app[CLOCKS].refused(refusal, sent_ns, answered_ns)

        runtime.links = PeerLinks(
            session, config.secret, config.node_id, config.membership.retry_interval,
            on_sent=app[METRICS].monitoring_bytes.inc, on_refused=refused,
        )  # fmt: skip
        app[TRANSFERS].session = session
        ticker = asyncio.create_task(runtime.tick_forever())
        watcher = asyncio.create_task(watch_trainer(app)) if config.trainer_lease_s else None
        rotation = None
        if config.secret_file is not None and isinstance(config.secret, RotatingSecret):
            warn_if_loose(config.secret_file, runtime.log)
            rotation = asyncio.create_task(
                watch_secret(
                    config.secret_file, config.secret, config.secret_poll_s, app[METRICS], runtime.log
                )
            )
        reloads = _watch_party_files(config, app[METRICS], runtime.log)
        self_check = asyncio.create_task(
            check_advertised(session, app[ADVERTISE], app[INSTANCE], config.advertise is not None,
                             app[METRICS], runtime.log)
        )  # fmt: skip
        yield
        ticker.cancel()
        for task in (rotation, reloads, self_check):
            if task is not None:
                task.cancel()
        if watcher is not None:
            watcher.cancel()
        await runtime.close()


def _watch_party_files(config: SidecarConfig, metrics: SidecarMetrics, log: EventLog) -> asyncio.Task | None:
    """A multi-party node polls its party key file and policy for a change (hot reload)."""
    if (
        config.party_key_file is None
        or config.policy_file is None
        or not isinstance(config.secret, RotatingSecret)
    ):
        return None
    watch = PartyFilesWatch(
        config.party_key_file, config.policy_file, config.node_id, config.secret, metrics, log
    )
    return asyncio.create_task(watch.run(config.secret_poll_s))


def build_app(config: SidecarConfig, advertise: str, split: PieceSplit = plan_pieces) -> web.Application:
    """The sidecar app for a node reachable at ``advertise`` (its bound URL); ``split`` divides
    the snapshots this node pulls over their sources (the shard planner's, unless the
    sidecar's embedder passes another: the lab's benchmark baselines)."""
    log = EventLog(config.log_path, config.node_id)
    store = StateStore(config.state_dir, config.node_id) if config.state_dir is not None else None
    state = initial_state(config, advertise, store, log.write)
    app = web.Application(client_max_size=MAX_MESSAGE_BYTES, middlewares=MIDDLEWARES)
    app[LEASE] = TrainerLease()
    app[CONFIG] = config
    app[METRICS] = metrics = SidecarMetrics()
    app[TRANSFERS] = TransferService(config.node_id, config.secret, config.snapshot_dir, metrics, split)
    app[JOIN_REQUESTED] = []
    app[VERIFIER] = Verifier(config.secret)
    app[ADVERTISE], app[INSTANCE] = advertise, secrets.token_hex(16)
    app[CLOCKS] = ClockReport(config.secret, metrics, log, app[VERIFIER].window_s)

    def count(reason: str) -> None:
        reject(app, reason)

    app[RUNTIME] = MembershipRuntime(state, config.secret, log, metrics, on_reject=count, store=store)
    app[RENDEZVOUS] = TrainerRendezvous(config.node_id, config.secret, app[VERIFIER], count)
    app.cleanup_ctx.append(_runtime_ctx)
    add_peer_routes(app)
    add_local_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
    return app
