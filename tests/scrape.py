"""Reading one sample from a sidecar's /metrics page (Prometheus' own text parser), and waiting
for one to reach a value, with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import aiohttp
from prometheus_client.parser import text_string_to_metric_families


async def metric(session: aiohttp.ClientSession, url: str, name: str, **labels: str) -> float | None:
    """The sample ``name`` with ``labels`` on the sidecar at ``url``, or None."""
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


async def wait_metric(
    session: aiohttp.ClientSession,
    url: str,
    name: str,
    good: Callable[[float], bool],
    timeout_s: float,
    **labels: str,
) -> float:
    """Until the sample satisfies ``good``; its value."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = await metric(session, url, name, **labels)
        if value is not None and good(value):
            return value
        assert time.monotonic() < deadline, f"{name}{labels} at {url} is {value} after {timeout_s:.0f} s"
        await asyncio.sleep(0.1)
