"""At start, a sidecar asks for its own ``/healthz`` at the URL it advertises, so that an
address that does not reach it is said at once (stderr, event log ``advertise_check``, the
gauge ``chaostrain_advertise_reachable``) instead of the node never being heard.

It keeps running when the check fails: a pod often cannot reach itself through its own
NodePort or load balancer (no hairpin), so a failed check does not prove that the other sites
cannot reach it, and a load balancer's address or a DNS name may start working minutes later;
exiting would restart a node that may work. It asks again every ``retry_s`` until the address
reaches it, and says so then. The verdict is :mod:`chaos_sidecar.self_check`'s."""

from __future__ import annotations

import asyncio
import sys

import aiohttp

from chaos_sidecar import self_check
from chaos_sidecar.eventlog import EventLog, Kind
from chaos_sidecar.metrics import SidecarMetrics

ASK_TIMEOUT_S = 3.0
FIRST_DEADLINE_S = 5.0  # quick retries this long at start (a just-bound port, a slow first DNS lookup)
FIRST_RETRY_S = 0.5


async def check_advertised(
    session: aiohttp.ClientSession,
    advertise: str,
    instance: str,
    flag_given: bool,
    metrics: SidecarMetrics,
    log: EventLog,
    retry_s: float = 30.0,
) -> None:
    metrics.advertise_reachable.set(0)
    loop = asyncio.get_running_loop()
    first_until = loop.time() + FIRST_DEADLINE_S
    said = False
    while True:
        verdict = self_check.judge(instance, *await _ask(session, advertise))
        if verdict.result == self_check.REACHABLE:
            metrics.advertise_reachable.set(1)
            log.write(Kind.ADVERTISE_CHECK, result=verdict.result, url=advertise)
            if said:
                print(
                    f"chaos-train sidecar: {advertise} reaches this sidecar now", file=sys.stderr, flush=True
                )
            return
        if not said and (verdict.result == self_check.ANOTHER_PROCESS or loop.time() >= first_until):
            said = True
            line = self_check.warning(flag_given, advertise, verdict)
            print(f"chaos-train sidecar: warning: {line}", file=sys.stderr, flush=True)
            log.write(Kind.ADVERTISE_CHECK, result=verdict.result, url=advertise, detail=verdict.detail)
        await asyncio.sleep(FIRST_RETRY_S if loop.time() < first_until else retry_s)


async def _ask(session: aiohttp.ClientSession, advertise: str) -> tuple[object, str | None]:
    """The JSON at ``advertise``/healthz, or why there is none."""
    try:
        timeout = aiohttp.ClientTimeout(total=ASK_TIMEOUT_S)
        async with session.get(advertise.rstrip("/") + "/healthz", timeout=timeout) as response:
            try:
                return await response.json(content_type=None), None
            except ValueError:
                return None, None  # something answered, not with JSON: not a sidecar
    except TimeoutError:
        return None, f"no answer within {ASK_TIMEOUT_S:.0f} s"
    except (aiohttp.ClientError, OSError) as exc:
        return None, str(exc) or type(exc).__name__
