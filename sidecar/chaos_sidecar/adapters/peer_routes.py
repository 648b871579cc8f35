"""The peer API (sidecar to sidecar, every request signed with the join secret): membership
streams, the rendezvous lookups of other sidecars, snapshot shards and link probes."""

from __future__ import annotations

import time

import aiohttp
from aiohttp import web

from chaos_sidecar.adapters.app_state import (
    CLOCKS,
    CONFIG,
    RENDEZVOUS,
    RUNTIME,
    SHARDS,
    STREAMS,
    VERIFIER,
    reject,
)
from chaos_sidecar.adapters.peer_stream import MAX_FRAME_BYTES, STREAM_PATH
from chaos_sidecar.adapters.shard_server import ShardServer
from chaos_sidecar.protocol import local_api
from chaos_sidecar.security import (
    FRAME_MAC_BYTES,
    NODE_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    frame_mac_valid,
    refusal_headers,
)


async def stream_handler(request: web.Request) -> web.StreamResponse:
    """An authenticated inbound peer stream: verify the handshake, then every frame."""
    app = request.app
    verifier, now_ns = app[VERIFIER], time.time_ns()
    reason = verifier.check("GET", STREAM_PATH, b"", request.headers, now_ns)
    # an authentic request's timestamp says how far its sender's clock is from ours; of refused
    # ones only a stale one signed with the secret (a stranger's timestamp says nothing, and
    # its node ids must not grow the gauge's labels)
    offset_ns: int | None = None
    if reason is None:
        offset_ns = int(request.headers[TIMESTAMP_HEADER]) - now_ns
    elif reason == "expired":
        offset_ns = verifier.sender_clock_offset_ns("GET", STREAM_PATH, b"", request.headers, now_ns)
    if offset_ns is not None:
        app[CLOCKS].peer_offset(request.headers[NODE_HEADER], offset_ns / 1e9, "request")
    if reason is not None:
        reject(app, reason)
        # a sender that holds the secret is told who refused and our clock; a stranger nothing
        authentic = reason not in ("unauthenticated", "bad_signature", "expired") or offset_ns is not None
        config = app[CONFIG]
        answer = (
            refusal_headers(config.secret, reason, config.node_id, now_ns, request.headers[SIGNATURE_HEADER])
            if authentic
            else {}
        )
        return web.json_response({"error": reason}, status=401, headers=answer)
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
            reject(app, "malformed")
            break
        seq += 1
        mac, body = frame.data[:FRAME_MAC_BYTES], frame.data[FRAME_MAC_BYTES:]
        if not frame_mac_valid(secret, mac, node, nonce, seq, body, time.time_ns()):
            reject(app, "bad_signature")
            break
        await runtime.receive(body, authenticated_as=node)
    app[STREAMS].discard(ws)
    await ws.close()
    return ws


async def _close_streams(app: web.Application) -> None:
    for ws in list(app[STREAMS]):
        await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"shutdown")


def add_peer_routes(app: web.Application) -> None:
    config = app[CONFIG]
    app[STREAMS] = set()
    app.on_shutdown.append(_close_streams)
    app.router.add_get(STREAM_PATH, stream_handler)
    app.router.add_get(local_api.PEER_RENDEZVOUS, app[RENDEZVOUS].peer_handler)
    if config.snapshot_dir is not None:
        server = ShardServer(
            config.snapshot_dir,
            config.secret,
            app[VERIFIER],
            upload_limit_Bps=config.upload_limit_Bps,
            on_reject=lambda reason: reject(app, reason),
        )
        app.router.add_routes(server.routes())
        app[SHARDS] = server
