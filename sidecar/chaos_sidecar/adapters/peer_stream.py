"""Peer transport: one authenticated WebSocket per (sender, receiver) pair.

The handshake is a signed ``GET /v1/stream`` (see :mod:`chaos_sidecar.security`); each
binary frame is ``MAC(32 bytes) || message`` with the MAC over sender, handshake nonce and
frame sequence number. Sending never blocks the state machine: frames go into a bounded
per-peer queue (oldest dropped when full; the protocol retransmits what matters) and a
writer task reconnects with a pause after failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp

from chaos_sidecar.protocol.messages import MAX_MESSAGE_BYTES
from chaos_sidecar.security import (
    FRAME_MAC_BYTES,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    frame_mac,
    signed_headers,
)

STREAM_PATH = "/v1/stream"
MAX_FRAME_BYTES = MAX_MESSAGE_BYTES + FRAME_MAC_BYTES
QUEUE_LIMIT = 1024


class _Link:
    def __init__(self, owner: PeerLinks, address: str) -> None:
        self.owner = owner
        self.address = address
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(QUEUE_LIMIT)
        self.task = asyncio.create_task(self._run())

    def put(self, raw: bytes) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # drop the oldest: newer state supersedes it
        self.queue.put_nowait(raw)

    async def _run(self) -> None:
        owner = self.owner
        while True:
            raw = await self.queue.get()
            sent_ns = time.time_ns()
            headers = signed_headers(owner.secret, "GET", STREAM_PATH, b"", sent_ns, owner.node_id)
            nonce = headers[TIMESTAMP_HEADER]
            try:
                async with owner.session.ws_connect(
                    self.address + STREAM_PATH, headers=headers, max_msg_size=MAX_FRAME_BYTES, autoping=True
                ) as ws:
                    seq = 0
                    while True:
                        seq += 1
                        frame = frame_mac(owner.secret, owner.node_id, nonce, seq, raw) + raw
                        await ws.send_bytes(frame)
                        owner.sent_bytes += len(frame)
                        owner.sent_frames += 1
                        owner.on_sent(len(frame))
                        raw = await self.queue.get()
            except (TimeoutError, aiohttp.ClientError, ConnectionError, OSError, RuntimeError) as exc:
                if isinstance(exc, aiohttp.WSServerHandshakeError) and exc.status == 401:
                    owner.on_refused(exc.headers or {}, headers[SIGNATURE_HEADER], sent_ns, time.time_ns())
                # peer down, unreachable or refusing: drop what is queued, wait, try again on demand
                while not self.queue.empty():
                    self.queue.get_nowait()
                await asyncio.sleep(owner.reconnect_pause)


class PeerLinks:
    """Outbound streams, one per peer address, created on first use."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        secret: bytes,
        node_id: str,
        reconnect_pause: float,
        on_sent=None,
        on_refused=None,
    ) -> None:
        self.session = session
        self.secret = secret
        self.node_id = node_id
        self.reconnect_pause = reconnect_pause
        self.on_sent = on_sent or (lambda n: None)
        # a peer answered a handshake with 401: (its headers, our signature, sent, answered ns)
        self.on_refused = on_refused or (lambda headers, signature, sent_ns, answered_ns: None)
        self._links: dict[str, _Link] = {}
        self.sent_bytes = 0  # monitoring traffic (membership, heartbeats, topology) this node sent
        self.sent_frames = 0

    def send(self, address: str, raw: bytes) -> None:
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = _Link(self, address)
        link.put(raw)

    async def close(self) -> None:
        for link in self._links.values():
            link.task.cancel()
        for link in self._links.values():
            with contextlib.suppress(asyncio.CancelledError):
                await link.task
