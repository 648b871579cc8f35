"""Reading a sidecar's refusal counters (``chaostrain_rejected_messages_total`` by reason)
from its /metrics page, with Prometheus' own text parser."""

from __future__ import annotations

import urllib.request

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

METRIC = "chaostrain_rejected_messages"


def parse_rejections(text: str) -> dict[str, float]:
    """Refusals counted so far, per reason."""
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == METRIC
        for sample in family.samples
        if sample.name == f"{METRIC}_total"
    }


async def rejected(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(url + "/metrics") as response:
        return parse_rejections(await response.text())


def rejected_now(url: str) -> dict[str, float]:
    """The same, for a test without an event loop."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
        return parse_rejections(response.read().decode())
