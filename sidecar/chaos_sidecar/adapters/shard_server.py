"""Serving snapshots to peers: manifests (MAC'd), shard ranges (zero-copy), bandwidth probes.

Every request is authenticated like the rest of the peer API (signed headers). Shard
ranges go out with ``sendfile`` unless the link to the requesting peer is rate limited, in
which case they go in chunks through that peer's token bucket (the portable WAN emulation).
Concurrent uploads are bounded; names are plain tokens, so no request reaches outside the
snapshot directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from pathlib import Path

from aiohttp import web

from chaos_sidecar.errors import InputError
from chaos_sidecar.security import NODE_HEADER, Verifier
from chaos_sidecar.transfer.ratelimit import TokenBucket
from chaos_sidecar.transfer.snapshot import data_path, manifest_path, parse_manifest

BODY_MAC_HEADER = "X-Chaos-Body-Mac"
CHUNK = 256 * 1024
MAX_PROBE_BYTES = 64 * 1024 * 1024


class ShardServer:
    def __init__(
        self,
        directory: Path,
        secret: bytes,
        verifier: Verifier,
        *,
        upload_limit_Bps: float | None = None,
        max_uploads: int = 8,
        on_reject=None,
        on_upload=None,
    ) -> None:
        self.directory = directory
        self.secret = secret
        self.verifier = verifier
        self.upload_limit_Bps = upload_limit_Bps
        self.slots = asyncio.Semaphore(max_uploads)
        self.buckets: dict[str, TokenBucket] = {}
        self.on_reject = on_reject or (lambda reason: None)
        self.on_upload = on_upload or (lambda peer, nbytes, seconds: None)

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/snapshots/{name}/manifest", self.manifest),
            web.get("/v1/snapshots/{name}/shards", self.shards),
            web.get("/v1/probe", self.probe),
        ]

    def _authenticate(self, request: web.Request) -> str:
        reason = self.verifier.check("GET", request.path_qs, b"", request.headers, time.time_ns())
        if reason is not None:
            self.on_reject(reason)
            raise web.HTTPUnauthorized(text=reason)
        return request.headers[NODE_HEADER]

    def set_upload_limit(self, limit_Bps: float | None) -> None:
        """Change the per-destination limit (fault injection: a link slows down or recovers)."""
        self.upload_limit_Bps = limit_Bps
        self.buckets.clear()

    def _pace_bytes(self) -> int:
        """Write size: on a rate-limited link, about 10 ms worth, so the bytes flow evenly
        (probes see the rate, and a cut-off reader leaves no large debt in the bucket)."""
        if self.upload_limit_Bps is None:
            return CHUNK
        return int(min(CHUNK, max(4096, self.upload_limit_Bps * 0.01)))

    def _bucket(self, peer: str) -> TokenBucket | None:
        if self.upload_limit_Bps is None:
            return None
        bucket = self.buckets.get(peer)
        if bucket is None:
            bucket = self.buckets[peer] = TokenBucket(self.upload_limit_Bps)
        return bucket

    def _name(self, request: web.Request) -> str:
        try:
            name = request.match_info["name"]
            manifest_path(self.directory, name)  # validates the token
            return name
        except InputError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None

    async def manifest(self, request: web.Request) -> web.Response:
        self._authenticate(request)
        name = self._name(request)
        try:
            raw = manifest_path(self.directory, name).read_bytes()
        except FileNotFoundError:
            raise web.HTTPNotFound(text=f"no snapshot {name}") from None
        mac = hmac.new(self.secret, raw, hashlib.sha256).hexdigest()
        return web.Response(body=raw, content_type="application/json", headers={BODY_MAC_HEADER: mac})

    async def shards(self, request: web.Request) -> web.StreamResponse:
        """``?start=I&count=N[&skip=B]``: base shards I..I+N-1, minus the first B bytes."""
        peer = self._authenticate(request)
        name = self._name(request)
        try:
            manifest = parse_manifest(manifest_path(self.directory, name).read_bytes())
            start = int(request.query.get("start", ""))
            count = int(request.query.get("count", "1"))
            skip = int(request.query.get("skip", "0"))
        except FileNotFoundError:
            raise web.HTTPNotFound(text=f"no snapshot {name}") from None
        except (ValueError, InputError) as exc:
            raise web.HTTPBadRequest(text=f"bad shard request: {exc}") from None
        if not (start >= 0 and count >= 1 and start + count <= manifest.shard_count and skip >= 0):
            raise web.HTTPRequestRangeNotSatisfiable(text="shards out of range")
        offset = manifest.shard_range(start)[0] + skip
        last_offset, last_length = manifest.shard_range(start + count - 1)
        length = last_offset + last_length - offset
        if length <= 0:
            raise web.HTTPRequestRangeNotSatisfiable(text="skip past the end")
        async with self.slots:
            started = time.monotonic()
            try:  # before the headers: a snapshot retired since its manifest was read is a 404
                f = data_path(self.directory, name).open("rb")
            except FileNotFoundError:
                raise web.HTTPNotFound(text=f"no snapshot {name}") from None
            with f:
                response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
                response.content_length = length
                await response.prepare(request)
                bucket = self._bucket(peer)
                if bucket is None and request.transport is not None:
                    await asyncio.get_running_loop().sendfile(request.transport, f, offset, length)
                else:
                    f.seek(offset)
                    left = length
                    while left > 0:
                        chunk = f.read(min(self._pace_bytes(), left))
                        if bucket is not None:
                            await bucket.take(len(chunk))
                        await response.write(chunk)
                        left -= len(chunk)
            await response.write_eof()
            self.on_upload(peer, length, time.monotonic() - started)
            return response

    async def probe(self, request: web.Request) -> web.StreamResponse:
        """``?bytes=N`` zero bytes through the same link limit as shards (bandwidth probes)."""
        peer = self._authenticate(request)
        try:
            size = int(request.query.get("bytes", "0"))
        except ValueError:
            raise web.HTTPBadRequest(text="bytes must be an integer") from None
        if not 0 < size <= MAX_PROBE_BYTES:
            raise web.HTTPBadRequest(text=f"bytes must be in 1..{MAX_PROBE_BYTES}")
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        bucket = self._bucket(peer)
        zeros = bytes(min(self._pace_bytes(), size))
        left = size
        try:
            while left > 0:
                n = min(len(zeros), left)
                if bucket is not None:
                    await bucket.take(n)
                await response.write(zeros[:n])
                left -= n
            await response.write_eof()
        except ConnectionError:
            pass  # the prober had enough (probes are time-bounded on the client side)
        return response
