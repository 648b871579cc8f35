"""Where trainers meet: the sidecar relays rendezvous entries between its trainer and peers.

The trainer of a view's first member hosts that epoch's store and publishes its address
here (POST /local/rendezvous). Other trainers ask their own sidecar (GET /local/rendezvous
?epoch=E&host=ID), which asks the host's sidecar over the authenticated peer API
(GET /v1/rendezvous?epoch=E). The same answer says whether the host's trainer finished the
job, so a node that comes back after the end stops instead of waiting for a group that is gone.
This module decides nothing: it stores, validates and forwards.
"""

from __future__ import annotations

import collections
import json
import time

import aiohttp
from aiohttp import web

from chaos_sidecar.errors import InputError
from chaos_sidecar.protocol import local_api
from chaos_sidecar.protocol.local_api import RendezvousEntry, TrainerStatus
from chaos_sidecar.security import Verifier, signed_headers

LOOKUP_TIMEOUT_S = 2.0
MAX_STATUS_BYTES = 4096


class TrainerRendezvous:
    def __init__(self, node_id: str, secret: bytes, verifier: Verifier, on_reject) -> None:
        self.node_id = node_id
        self.secret = secret
        self.verifier = verifier
        self.on_reject = on_reject
        self.entries: collections.OrderedDict[int, RendezvousEntry] = collections.OrderedDict()
        self.finished_step: int | None = None

    def publish(self, entry: RendezvousEntry) -> None:
        """The trainer hosts ``entry``'s store (a later round replaces an earlier one)."""
        self.entries[entry.epoch] = entry
        self.entries.move_to_end(entry.epoch)
        while len(self.entries) > local_api.KEEP_RENDEZVOUS_EPOCHS:
            self.entries.popitem(last=False)

    def status(self, epoch: int) -> TrainerStatus:
        return TrainerStatus(self.entries.get(epoch), self.finished_step)

    async def lookup(self, session: aiohttp.ClientSession, url: str, epoch: int) -> TrainerStatus:
        """The status of the trainer behind the sidecar at ``url`` (raises on any failure)."""
        path = f"{local_api.PEER_RENDEZVOUS}?epoch={epoch}"
        headers = signed_headers(self.secret, "GET", path, b"", time.time_ns(), self.node_id)
        timeout = aiohttp.ClientTimeout(total=LOOKUP_TIMEOUT_S)
        async with session.get(url + path, headers=headers, timeout=timeout) as response:
            raw = await response.content.read(MAX_STATUS_BYTES + 1)
            if response.status != 200:
                raise ConnectionError(f"HTTP {response.status}")
        if len(raw) > MAX_STATUS_BYTES:
            raise InputError("rendezvous", f"answer larger than {MAX_STATUS_BYTES} bytes")
        return TrainerStatus.from_json(json.loads(raw))

    async def peer_handler(self, request: web.Request) -> web.Response:
        """GET /v1/rendezvous?epoch=E from an authenticated peer."""
        reason = self.verifier.check("GET", request.path_qs, b"", request.headers, time.time_ns())
        if reason is not None:
            self.on_reject(reason)
            raise web.HTTPUnauthorized(text=reason)
        return web.json_response(self.status(epoch_query(request)).to_json())


def epoch_query(request: web.Request) -> int:
    try:
        epoch = int(request.query["epoch"])
        if epoch < 0:
            raise ValueError
    except (KeyError, ValueError):
        raise web.HTTPBadRequest(text="epoch: expected a non-negative integer") from None
    return epoch
