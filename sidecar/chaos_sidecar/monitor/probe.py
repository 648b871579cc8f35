"""Active probes over the authenticated peer API (an adapter: it measures, the table keeps)."""

from __future__ import annotations

import time

import aiohttp

from chaos_sidecar.security import signed_headers


async def probe_bandwidth(
    session: aiohttp.ClientSession,
    url: str,
    secret: bytes,
    node: str,
    size: int = 4 * 1024 * 1024,
    max_s: float = 0.3,
) -> tuple[float, float]:
    """(bandwidth bytes/s, RTT seconds) of the link from ``url`` to us.

    RTT is the time to the first byte. The probe stops after ``size`` bytes or ``max_s``
    seconds of data, whichever comes first, so a slow link costs a bounded time. Bandwidth is
    measured over the second half of that time only, so connection set-up and a shaped link's
    burst allowance do not inflate it.
    """
    path = f"/v1/probe?bytes={size}"
    started = time.monotonic()
    samples: list[tuple[float, int]] = []  # (time, bytes so far)
    total = 0
    async with session.get(
        url + path, headers=signed_headers(secret, "GET", path, b"", time.time_ns(), node)
    ) as r:
        r.raise_for_status()
        async for chunk in r.content.iter_any():
            total += len(chunk)
            samples.append((time.monotonic(), total))
            if samples[-1][0] - samples[0][0] >= max_s:
                break  # leaving the block closes the connection; the source stops sending
    assert samples, "empty probe"
    first_at, ended = samples[0][0], samples[-1][0]
    rtt = first_at - started
    middle = next((s for s in samples if s[0] >= (first_at + ended) / 2), samples[-1])
    if ended > middle[0] and total > middle[1]:
        return (total - middle[1]) / (ended - middle[0]), rtt
    return total / max(ended - started, 1e-9), rtt


async def round_trip(session: aiohttp.ClientSession, url: str) -> float:
    """Seconds for one small request to ``url``'s ``/readyz`` and its answer (a round trip,
    plus a connection set-up when the session holds none to it)."""
    started = time.monotonic()
    async with session.get(url + "/readyz") as r:
        await r.read()
    return time.monotonic() - started
