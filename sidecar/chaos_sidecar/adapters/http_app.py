"""The sidecar's aiohttp application: peer API, local trainer API, ops endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from prometheus_client import generate_latest

from chaos_sidecar.adapters.peer_stream import MAX_FRAME_BYTES, STREAM_PATH, PeerLinks
from chaos_sidecar.adapters.rendezvous import TrainerRendezvous, epoch_query
from chaos_sidecar.adapters.runtime import MembershipRuntime
from chaos_sidecar.adapters.secret_watch import warn_if_loose, watch_secret
from chaos_sidecar.adapters.shard_server import ShardServer
from chaos_sidecar.adapters.state_store import StateStore, initial_state
from chaos_sidecar.config import SidecarConfig, client_tls
from chaos_sidecar.errors import InputError
from chaos_sidecar.eventlog import EventLog, Kind
from chaos_sidecar.membership import machine as sm
from chaos_sidecar.metrics import SidecarMetrics
from chaos_sidecar.monitor.estimates import EstimateTable
from chaos_sidecar.monitor.probe import probe_bandwidth
from chaos_sidecar.protocol import local_api
from chaos_sidecar.protocol.local_api import TRAINER_HEADER, RendezvousEntry, parse_report
from chaos_sidecar.protocol.messages import MAX_MESSAGE_BYTES
from chaos_sidecar.security import (
    FRAME_MAC_BYTES,
    NODE_HEADER,
    TIMESTAMP_HEADER,
    RotatingSecret,
    Verifier,
    frame_mac_valid,
)
from chaos_sidecar.transfer.puller import POLICIES, Puller, SourceSpec, TransferError
from chaos_sidecar.transfer.snapshot import check_name


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
ESTIMATES = web.AppKey("estimates", EstimateTable)
STREAMS = web.AppKey("streams", set)  # open inbound peer streams, closed on shutdown
WARMING = web.AppKey("warming", set)  # link probes started when the trainer asked to join
LEASE = web.AppKey("lease", TrainerLease)
SHARDS = web.AppKey("shards", ShardServer)
RENDEZVOUS = web.AppKey("rendezvous", TrainerRendezvous)


@web.middleware
async def _trainer_lease(request: web.Request, handler):
    """Every trainer request renews the trainer's lease, while it is open and when it ends."""
    if TRAINER_HEADER not in request.headers or not request.path.startswith("/local/"):
        return await handler(request)
    lease = request.app[LEASE]
    lease.open += 1
    try:
        return await handler(request)
    finally:
        lease.open -= 1
        lease.last = time.monotonic()


async def _watch_trainer(app: web.Application) -> None:
    """A trainer that stops calling (killed, OOM) leaves the group through its sidecar."""
    lease, runtime, limit = app[LEASE], app[RUNTIME], app[CONFIG].trainer_lease_s
    assert limit is not None
    while True:
        await asyncio.sleep(min(limit / 4, 0.5))
        if app[RENDEZVOUS].finished_step is not None:
            return  # the trainer finished the job: this node stays to tell a late joiner so
        if lease.expired(limit, time.monotonic()) and runtime.state.status in (sm.MEMBER, sm.JOINING):
            runtime.log.write(Kind.TRAINER_LOST, silent_s=round(time.monotonic() - lease.last, 3))
            await runtime.apply(sm.RequestLeave())
            return


def _is_local(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


def _reject(app: web.Application, reason: str) -> None:
    app[METRICS].rejected.labels(reason).inc()


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(request.app[METRICS].registry), content_type="text/plain")


async def report_handler(request: web.Request) -> web.Response:
    """The trainer's progress: ``{"step": int, "idle_s": float, "finished_step": int}`` (each
    optional; ``finished_step`` once it trained the job's last step)."""
    if not _is_local(request):
        raise web.HTTPForbidden(text="local API")
    try:
        step, idle, finished = parse_report(await request.json())
    except (ValueError, InputError) as exc:
        return web.json_response({"error": f"bad report: {exc}"}, status=400)
    if finished is not None:
        request.app[RENDEZVOUS].finished_step = finished
    metrics = request.app[METRICS]
    if step is not None:
        metrics.step.set(step)
        requested = request.app[JOIN_REQUESTED]
        if requested:  # the first step after this node asked to join: its scale-out delay
            metrics.scale_out_delay.observe(time.monotonic() - requested.pop())
    if idle:
        metrics.idle.inc(idle)
    return web.json_response({"ok": True})


async def stream_handler(request: web.Request) -> web.StreamResponse:
    """An authenticated inbound peer stream: verify the handshake, then every frame."""
    app = request.app
    reason = app[VERIFIER].check("GET", STREAM_PATH, b"", request.headers, time.time_ns())
    if reason is not None:
        _reject(app, reason)
        return web.json_response({"error": reason}, status=401)
    node = request.headers[NODE_HEADER]
    nonce = request.headers[TIMESTAMP_HEADER]
    secret = app[CONFIG].secret
    runtime = app[RUNTIME]
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME_BYTES, autoping=True)
    await ws.prepare(request)
    app[STREAMS].add(ws)
    seq = 0
    async for frame in ws:
        if frame.type != aiohttp.WSMsgType.BINARY or len(frame.data) < FRAME_MAC_BYTES:
            _reject(app, "malformed")
            break
        seq += 1
        mac, body = frame.data[:FRAME_MAC_BYTES], frame.data[FRAME_MAC_BYTES:]
        if not frame_mac_valid(secret, mac, node, nonce, seq, body, time.time_ns()):
            _reject(app, "bad_signature")
            break
        await runtime.receive(body, authenticated_as=node)
    app[STREAMS].discard(ws)
    await ws.close()
    return ws


async def _close_streams(app: web.Application) -> None:
    for ws in list(app[STREAMS]):
        await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"shutdown")


async def view_handler(request: web.Request) -> web.Response:
    if not _is_local(request):
        raise web.HTTPForbidden(text="local API")
    return web.json_response(
        request.app[RUNTIME].snapshot() | {"rejections": request.app[METRICS].rejections()}
    )


async def wait_view_handler(request: web.Request) -> web.Response:
    """Long poll: ``?after=E&timeout=S`` answers once the epoch passes E (or S elapse)."""
    if not _is_local(request):
        raise web.HTTPForbidden(text="local API")
    try:
        after = int(request.query.get("after", "-1"))
        timeout = min(float(request.query.get("timeout", "10")), 60.0)
    except ValueError:
        raise web.HTTPBadRequest(text="after must be an integer, timeout a number") from None
    runtime = request.app[RUNTIME]

    def changed() -> bool:
        return runtime.state.epoch > after or runtime.state.status == sm.LEFT

    async with runtime.changed:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(runtime.changed.wait_for(changed), timeout)
    return web.json_response(runtime.snapshot())


async def pull_handler(request: web.Request) -> web.Response:
    """The trainer asks for snapshot ``name`` from member ``sources`` (ids in the view)."""
    if not _is_local(request):
        raise web.HTTPForbidden(text="local API")
    config = request.app[CONFIG]
    if config.snapshot_dir is None:
        raise web.HTTPConflict(text="this sidecar has no --snapshot-dir")
    try:
        payload = await request.json()
        name = check_name(payload["name"])
        ids = [str(x) for x in payload["sources"]]
        policy = payload.get("policy", "planned")
        if policy not in POLICIES:
            raise InputError("policy", f"expected one of {POLICIES}, got {policy!r}")
    except (ValueError, KeyError, TypeError, InputError) as exc:
        raise web.HTTPBadRequest(text=f"expected {{'name', 'sources', 'policy'?}}: {exc}") from None
    if not ids:
        raise web.HTTPBadRequest(text="sources: expected at least one member")
    runtime = request.app[RUNTIME]
    view = runtime.state.view
    specs = []
    for sid in ids:
        address = view.address_of(sid) if view else None
        if address is None:
            raise web.HTTPBadRequest(text=f"source {sid!r} is not in the view")
        specs.append(SourceSpec(sid, address, bandwidth_Bps=1.0))
    table = request.app[ESTIMATES]
    session = runtime.links.session if runtime.links else None
    assert session is not None
    if request.app[WARMING]:  # measured while the group admitted us: wait rather than probe twice
        await asyncio.wait(request.app[WARMING], timeout=5)
    await _probe_links(request.app, {s.id: s.url for s in specs})
    for spec in specs:
        spec.bandwidth_Bps = table.bandwidth(spec.id)
        spec.overhead_s = table.request_overhead_s(spec.id)
    puller = Puller(session, config.secret, config.node_id, config.snapshot_dir, name,
                    on_throughput=table.observe_bandwidth)  # fmt: skip
    try:
        result = await puller.pull(specs, policy=policy)
    except (TransferError, InputError) as exc:
        return web.json_response({"error": str(exc)}, status=502)
    metrics = request.app[METRICS]
    for sid, stats in result.per_source.items():
        metrics.transfer_bytes.labels(sid).inc(stats.bytes)
        metrics.transfer_seconds.labels(sid).inc(stats.seconds)
    metrics.replans.inc(result.replans)
    for peer, estimate in table.links.items():
        if estimate.bandwidth_Bps is not None:
            metrics.bandwidth.labels(peer).set(estimate.bandwidth_Bps)
        if estimate.rtt_s is not None:
            metrics.rtt.labels(peer).set(estimate.rtt_s)
    return web.json_response(result.to_json())


async def _probe_links(app: web.Application, peers: dict[str, str]) -> None:
    """Measure the links from ``peers`` (id -> URL) that the estimate table does not know."""
    table, config, runtime = app[ESTIMATES], app[CONFIG], app[RUNTIME]
    assert runtime.links is not None
    unknown = {
        p: url for p, url in peers.items() if p not in table.links or table.links[p].bandwidth_Bps is None
    }
    probes = await asyncio.gather(
        *(
            probe_bandwidth(runtime.links.session, url, config.secret, config.node_id)
            for url in unknown.values()
        ),
        return_exceptions=True,
    )
    for peer, probe in zip(unknown, probes, strict=True):
        if not isinstance(probe, BaseException):
            table.observe_bandwidth(peer, probe[0])
            table.observe_rtt(peer, probe[1])


async def links_handler(request: web.Request) -> web.Response:
    """The estimated links from view members ``?peers=a,b`` to this node (probed if unknown):
    the trainer weighs an overlap join's gradient replay against its step time with them."""
    if not _is_local(request):
        raise web.HTTPForbidden(text="local API")
    view = request.app[RUNTIME].state.view
    peers = {}
    for peer in filter(None, request.query.get("peers", "").split(",")):
        address = view.address_of(peer) if view else None
        if address is None:
            raise web.HTTPBadRequest(text=f"peers: {peer!r} is not in the view")
        peers[peer] = address
    if request.app[WARMING]:
        await asyncio.wait(request.app[WARMING], timeout=5)
    await _probe_links(request.app, peers)
    table = request.app[ESTIMATES]
    estimates = {peer: table.links[peer] for peer in peers if peer in table.links}
    return web.json_response(
        {p: {"bandwidth_Bps": e.bandwidth_Bps, "rtt_s": e.rtt_s} for p, e in estimates.items()}
    )


async def _warm_estimates(app: web.Application, deadline_s: float = 30.0) -> None:
    """A joiner pulls its state right after admission: measure its links to the members while
    the group admits it and reaches a step boundary, not on the transfer's critical path."""
    runtime, me = app[RUNTIME], app[CONFIG].node_id
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        view = runtime.state.view
        if view is not None and me in view.members and len(view.members) > 1:
            await _probe_links(app, {m: view.address_of(m) for m in view.members if m != me})
            return
        await asyncio.sleep(0.02)


async def _cancel_background(app: web.Application) -> None:
    for task in app[WARMING]:
        task.cancel()


async def join_handler(request: web.Request) -> web.Response:
    """The trainer is ready: a standby sidecar starts asking for admission (idempotent)."""
    if not _is_local(request):
        raise web.HTTPForbidden(text="local API")
    if request.app[RUNTIME].state.status == sm.STANDBY:
        request.app[JOIN_REQUESTED].append(time.monotonic())
        task = asyncio.create_task(_warm_estimates(request.app))
        request.app[WARMING].add(task)
        task.add_done_callback(request.app[WARMING].discard)
    await request.app[RUNTIME].apply(sm.RequestJoin())
    return web.json_response({"status": request.app[RUNTIME].state.status}, status=202)


async def leave_handler(request: web.Request) -> web.Response:
    if not _is_local(request):
        raise web.HTTPForbidden(text="local API")
    await request.app[RUNTIME].apply(sm.RequestLeave())
    return web.json_response({"leaving": True}, status=202)


async def publish_rendezvous_handler(request: web.Request) -> web.Response:
    """The trainer hosts the store of an epoch's rendezvous round (a RendezvousEntry)."""
    if not _is_local(request):
        raise web.HTTPForbidden(text="local API")
    try:
        entry = RendezvousEntry.from_json(await request.json())
    except (ValueError, InputError) as exc:
        return web.json_response({"error": f"bad rendezvous entry: {exc}"}, status=400)
    request.app[RENDEZVOUS].publish(entry)
    return web.json_response(entry.to_json())


async def lookup_rendezvous_handler(request: web.Request) -> web.Response:
    """``?epoch=E&host=ID``: the TrainerStatus of member ID's trainer for epoch E, asked of
    its sidecar (answered here when ID is this node)."""
    if not _is_local(request):
        raise web.HTTPForbidden(text="local API")
    epoch = epoch_query(request)
    host = request.query.get("host", "")
    rendezvous = request.app[RENDEZVOUS]
    if host == request.app[CONFIG].node_id:
        return web.json_response(rendezvous.status(epoch).to_json())
    runtime = request.app[RUNTIME]
    url = runtime.state.view.address_of(host) if runtime.state.view else None
    if url is None:
        raise web.HTTPBadRequest(text=f"host: {host!r} is not in the view")
    assert runtime.links is not None
    try:
        status = await rendezvous.lookup(runtime.links.session, url, epoch)
    except (TimeoutError, aiohttp.ClientError, OSError, ValueError, InputError) as exc:
        return web.json_response({"error": f"asking {host}: {exc!r}"[:300]}, status=502)
    return web.json_response(status.to_json())


async def faults_handler(request: web.Request) -> web.Response:
    if not request.app[CONFIG].fault_injection or not _is_local(request):
        raise web.HTTPNotFound()
    try:
        payload = await request.json()
        block = payload.get("block", [])
        unblock = payload.get("unblock", [])
        if not all(isinstance(x, str) for x in [*block, *unblock]):
            raise TypeError
        rate = payload.get("upload_limit_mbps", ...)
        if (
            rate is not ...
            and rate is not None
            and (isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0)
        ):
            raise TypeError
    except (ValueError, TypeError, AttributeError):
        return web.json_response(
            {"error": "expected {'block': [ids], 'unblock': [ids], 'upload_limit_mbps': number|null}"},
            status=400,
        )
    runtime = request.app[RUNTIME]
    runtime.blocked |= set(block)
    runtime.blocked -= set(unblock)
    if rate is not ... and SHARDS in request.app:
        request.app[SHARDS].set_upload_limit(None if rate is None else rate * 1e6)
    return web.json_response({"blocked": sorted(runtime.blocked)})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    member = request.app[RUNTIME].state.is_member
    return web.json_response({"member": member}, status=200 if member else 503)


async def _runtime_ctx(app: web.Application) -> AsyncIterator[None]:
    runtime = app[RUNTIME]
    timeout = aiohttp.ClientTimeout(total=max(1.0, app[CONFIG].membership.suspect_timeout))
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=16, ssl=client_tls(app[CONFIG]) or True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        config = app[CONFIG]
        runtime.links = PeerLinks(
            session, config.secret, config.node_id, config.membership.retry_interval,
            on_sent=app[METRICS].monitoring_bytes.inc,
        )  # fmt: skip
        ticker = asyncio.create_task(runtime.tick_forever())
        watcher = asyncio.create_task(_watch_trainer(app)) if config.trainer_lease_s else None
        rotation = None
        if config.secret_file is not None and isinstance(config.secret, RotatingSecret):
            warn_if_loose(config.secret_file, runtime.log)
            rotation = asyncio.create_task(
                watch_secret(
                    config.secret_file, config.secret, config.secret_poll_s, app[METRICS], runtime.log
                )
            )
        yield
        ticker.cancel()
        if rotation is not None:
            rotation.cancel()
        if watcher is not None:
            watcher.cancel()
        await runtime.close()


def build_app(config: SidecarConfig, advertise: str) -> web.Application:
    """The sidecar app for a node reachable at ``advertise`` (its bound URL)."""
    log = EventLog(config.log_path, config.node_id)
    store = StateStore(config.state_dir, config.node_id) if config.state_dir is not None else None
    state = initial_state(config, advertise, store, log.write)
    app = web.Application(client_max_size=MAX_MESSAGE_BYTES, middlewares=[_trainer_lease])
    app[LEASE] = TrainerLease()
    app[CONFIG] = config
    app[ESTIMATES] = EstimateTable()
    app[STREAMS] = set()
    app.on_shutdown.append(_close_streams)
    app[WARMING] = set()
    app.on_shutdown.append(_cancel_background)
    app[METRICS] = metrics = SidecarMetrics()
    app[JOIN_REQUESTED] = []
    app[VERIFIER] = Verifier(config.secret)

    def count(reason: str) -> None:
        _reject(app, reason)

    app[RUNTIME] = MembershipRuntime(state, config.secret, log, metrics, on_reject=count, store=store)
    app[RENDEZVOUS] = rendezvous = TrainerRendezvous(config.node_id, config.secret, app[VERIFIER], count)
    app.router.add_get(local_api.PEER_RENDEZVOUS, rendezvous.peer_handler)
    app.cleanup_ctx.append(_runtime_ctx)
    app.router.add_get(STREAM_PATH, stream_handler)
    if config.snapshot_dir is not None:
        server = ShardServer(
            config.snapshot_dir,
            config.secret,
            app[VERIFIER],
            upload_limit_Bps=config.upload_limit_Bps,
            on_reject=count,
        )
        app.router.add_routes(server.routes())
        app[SHARDS] = server
    app.router.add_get(local_api.VIEW, view_handler)
    app.router.add_get(local_api.WAIT_VIEW, wait_view_handler)
    app.router.add_post(local_api.PULL, pull_handler)
    app.router.add_get(local_api.LINKS, links_handler)
    app.router.add_post(local_api.LEAVE, leave_handler)
    app.router.add_post(local_api.JOIN, join_handler)
    app.router.add_post(local_api.FAULTS, faults_handler)
    app.router.add_post(local_api.RENDEZVOUS, publish_rendezvous_handler)
    app.router.add_get(local_api.RENDEZVOUS, lookup_rendezvous_handler)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_post(local_api.REPORT, report_handler)
    app.router.add_get("/readyz", readyz)
    return app
