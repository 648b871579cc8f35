"""Active probes over the authenticated peer API (an adapter: it measures, the table keeps)."""

from __future__ import annotations

import time

import aiohttp

from chaos_sidecar.security import signed_headers


async def probe_bandwidth(
    session: aiohttp.ClientSession, url: str, secret: bytes, node: str, size: int = 4 * 1024 * 1024
) -> tuple[float, float]:
    """(bandwidth bytes/s, RTT seconds) of the link from ``url`` to us.

    RTT is the time to the first byte. Bandwidth is measured over the second half of the
    probe only, so connection set-up and a shaped link's burst allowance do not inflate it.
    """
    path = f"/v1/probe?bytes={size}"
    started = time.monotonic()
    first_at = half_at = None
    half_bytes = total = 0
    async with session.get(
        url + path, headers=signed_headers(secret, "GET", path, b"", time.time_ns(), node)
    ) as r:
        r.raise_for_status()
        async for chunk in r.content.iter_any():
            now = time.monotonic()
            if first_at is None:
                first_at = now
            total += len(chunk)
            if half_at is None and total >= size // 2:
                half_at, half_bytes = now, total
        ended = time.monotonic()
    assert first_at is not None
    rtt = first_at - started
    if half_at is not None and ended > half_at and total > half_bytes:
        return (total - half_bytes) / (ended - half_at), rtt
    return total / max(ended - started, 1e-9), rtt
