"""The local API (a trainer to its own sidecar, loopback only, under ``/local/``; the contract
is :mod:`chaos_sidecar.protocol.local_api`): one middleware admits loopback callers only,
another keeps the trainer's lease. Transfers and link estimates are the transfer service's."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time

import aiohttp
from aiohttp import web

from chaos_sidecar.adapters.app_state import (
    CONFIG,
    JOIN_REQUESTED,
    LEASE,
    METRICS,
    RENDEZVOUS,
    RUNTIME,
    SHARDS,
    TRANSFERS,
)
from chaos_sidecar.adapters.rendezvous import epoch_query
from chaos_sidecar.errors import InputError
from chaos_sidecar.eventlog import Kind
from chaos_sidecar.membership import machine as sm
from chaos_sidecar.protocol import local_api
from chaos_sidecar.protocol.local_api import (
    LOCAL_PREFIX,
    TRAINER_HEADER,
    CollectivePlan,
    RendezvousEntry,
    parse_report,
)
from chaos_sidecar.protocol.messages import View
from chaos_sidecar.security import collective_keys, party_policy
from chaos_sidecar.transfer.puller import TransferError
from chaos_sidecar.transfer.snapshot import check_name


def _local(request: web.Request) -> bool:
    return request.path.startswith(LOCAL_PREFIX)


@web.middleware
async def _loopback_only(request: web.Request, handler):
    """The local API answers its own node's trainer only: requests from loopback."""
    if _local(request) and not _is_loopback(request):
        raise web.HTTPForbidden(text="local API")
    return await handler(request)


@web.middleware
async def _trainer_lease(request: web.Request, handler):
    """Every trainer request renews the trainer's lease, while it is open and when it ends."""
    if TRAINER_HEADER not in request.headers or not _local(request):
        return await handler(request)
    lease = request.app[LEASE]
    lease.open += 1
    try:
        return await handler(request)
    finally:
        lease.open -= 1
        lease.last = time.monotonic()


async def watch_trainer(app: web.Application) -> None:
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


def _is_loopback(request: web.Request) -> bool:
    try:
        return ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        return False


async def report_handler(request: web.Request) -> web.Response:
    """The trainer's progress: ``{"step": int, "idle_s": float, "finished_step": int}`` (each
    optional; ``finished_step`` once it trained the job's last step)."""
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


async def view_handler(request: web.Request) -> web.Response:
    return web.json_response(
        request.app[RUNTIME].snapshot() | {"rejections": request.app[METRICS].rejections()}
    )


async def wait_view_handler(request: web.Request) -> web.Response:
    """Long poll: ``?after=E&timeout=S`` answers once the epoch passes E (or S elapse)."""
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
    """The trainer asks for snapshot ``name`` from member ``sources`` (ids in the view);
    ``nearby`` (optional): those of them at the trainer's own site."""
    config = request.app[CONFIG]
    if config.snapshot_dir is None:
        raise web.HTTPConflict(text="this sidecar has no --snapshot-dir")
    try:
        payload = await request.json()
        name = check_name(payload["name"])
        ids = [str(x) for x in payload["sources"]]
        nearby = frozenset(str(x) for x in payload.get("nearby", []))
    except (ValueError, KeyError, TypeError, AttributeError, InputError) as exc:
        raise web.HTTPBadRequest(text=f"expected {{'name', 'sources', 'nearby'?}}: {exc}") from None
    if not ids:
        raise web.HTTPBadRequest(text="sources: expected at least one member")
    if not nearby <= set(ids):
        raise web.HTTPBadRequest(text=f"nearby: {sorted(nearby - set(ids))} are not among the sources")
    sources = _addresses(request.app[RUNTIME].state.view, ids, "sources")
    try:
        result = await request.app[TRANSFERS].pull(name, sources, nearby)
    except (TransferError, InputError) as exc:
        return web.json_response({"error": str(exc)}, status=502)
    return web.json_response(result.to_json())


def _addresses(view: View | None, ids: list[str], field: str) -> dict[str, str]:
    """The addresses of members ``ids`` of ``view``; 400 naming ``field`` when one is not in it."""
    addresses = {}
    for member in ids:
        address = view.address_of(member) if view else None
        if address is None:
            raise web.HTTPBadRequest(text=f"{field}: {member!r} is not in the view")
        addresses[member] = address
    return addresses


async def links_handler(request: web.Request) -> web.Response:
    """The estimated links from view members ``?peers=a,b`` to this node (probed if unknown):
    the trainer weighs an overlap join's gradient replay against its step time with them."""
    peers = list(filter(None, request.query.get("peers", "").split(",")))
    estimates = await request.app[TRANSFERS].links(
        _addresses(request.app[RUNTIME].state.view, peers, "peers")
    )
    return web.json_response(
        {p: {"bandwidth_Bps": e.bandwidth_Bps, "rtt_s": e.rtt_s} for p, e in estimates.items()}
    )


def _admitted_peers(app: web.Application) -> dict[str, str] | None:
    """The other members and their addresses once the view admitted this node, else None."""
    view, me = app[RUNTIME].state.view, app[CONFIG].node_id
    if view is None or me not in view.members or len(view.members) < 2:
        return None
    return {m: a for m, a in zip(view.members, view.addresses, strict=True) if m != me}


async def _stop_transfers(app: web.Application) -> None:
    app[TRANSFERS].close()


async def join_handler(request: web.Request) -> web.Response:
    """The trainer is ready: a standby sidecar starts asking for admission (idempotent)."""
    if request.app[RUNTIME].state.status == sm.STANDBY:
        request.app[JOIN_REQUESTED].append(time.monotonic())
        request.app[TRANSFERS].warm_up(lambda: _admitted_peers(request.app))
    await request.app[RUNTIME].apply(sm.RequestJoin())
    return web.json_response({"status": request.app[RUNTIME].state.status}, status=202)


async def leave_handler(request: web.Request) -> web.Response:
    await request.app[RUNTIME].apply(sm.RequestLeave())
    return web.json_response({"leaving": True}, status=202)


async def publish_rendezvous_handler(request: web.Request) -> web.Response:
    """The trainer hosts the store of an epoch's rendezvous round (a RendezvousEntry)."""
    try:
        entry = RendezvousEntry.from_json(await request.json())
    except (ValueError, InputError) as exc:
        return web.json_response({"error": f"bad rendezvous entry: {exc}"}, status=400)
    request.app[RENDEZVOUS].publish(entry)
    return web.json_response(entry.to_json())


async def lookup_rendezvous_handler(request: web.Request) -> web.Response:
    """``?epoch=E&host=ID``: the TrainerStatus of member ID's trainer for epoch E, asked of
    its sidecar (answered here when ID is this node)."""
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


async def collective_handler(request: web.Request) -> web.Response:
    """``?members=a,b,...``: the CollectivePlan of a view of these members: their parties when
    they span several, and unless the owner allowed cleartext collectives the keys the
    trainer's cross-party channels derive theirs from."""
    members = [m for m in request.query.get("members", "").split(",") if m]
    config = request.app[CONFIG]
    policy = party_policy(config.secret)
    plan = CollectivePlan(None)
    if policy is not None:
        owners = [policy.owner(m) for m in members]
        unowned = [m for m, o in zip(members, owners, strict=True) if o is None]
        if unowned:
            return web.json_response({"error": f"no party of the policy owns {unowned}"}, status=409)
        names = tuple(o.name for o in owners)
        if len(set(names)) > 1 and config.cleartext_collectives:
            plan = CollectivePlan(names, cleartext=True)
        elif len(set(names)) > 1:
            plan = CollectivePlan(names, keys=tuple(collective_keys(config.secret, time.time_ns())))
    return web.json_response(plan.to_json())


async def faults_handler(request: web.Request) -> web.Response:
    if not request.app[CONFIG].fault_injection:
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


MIDDLEWARES = (_loopback_only, _trainer_lease)  # the application's: aiohttp runs them for every route


def add_local_routes(app: web.Application) -> None:
    app.on_shutdown.append(_stop_transfers)
    app.router.add_get(local_api.VIEW, view_handler)
    app.router.add_get(local_api.WAIT_VIEW, wait_view_handler)
    app.router.add_post(local_api.PULL, pull_handler)
    app.router.add_get(local_api.LINKS, links_handler)
    app.router.add_post(local_api.LEAVE, leave_handler)
    app.router.add_post(local_api.JOIN, join_handler)
    app.router.add_post(local_api.FAULTS, faults_handler)
    app.router.add_post(local_api.RENDEZVOUS, publish_rendezvous_handler)
    app.router.add_get(local_api.RENDEZVOUS, lookup_rendezvous_handler)
    app.router.add_post(local_api.REPORT, report_handler)
    app.router.add_get(local_api.COLLECTIVE, collective_handler)
