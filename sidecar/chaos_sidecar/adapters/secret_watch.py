"""Picks up a rotated join secret from the mounted file, without a restart.

Kubernetes updates a mounted Secret by swapping a symlink to a new directory; the file is polled
(inode, size and mtime of its target) every ``poll_s``, and a changed key is offered to the
:class:`~chaos_sidecar.security.RotatingSecret`: accepted for verification at once, used for
signing after its delay, the old key accepted for its grace period. An empty or too-short key is
refused (logged, counted) and the old one stays in force.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from chaos_sidecar.config import loose_permissions, read_secret_file
from chaos_sidecar.eventlog import EventLog, Kind
from chaos_sidecar.metrics import SidecarMetrics
from chaos_sidecar.security import MIN_SECRET_BYTES, RotatingSecret


def warn_if_loose(path: Path, log: EventLog) -> str | None:
    """At start: a secret file readable by group or others gets a warning (stderr and log)."""
    try:
        why = loose_permissions(path)
    except OSError:
        return None
    if why is not None:
        print(f"chaos-train sidecar: warning: join secret file {why}", file=sys.stderr, flush=True)
        log.write(Kind.SECRET_FILE_LOOSE, detail=why)
    return why


async def watch_secret(
    path: Path, secret: RotatingSecret, poll_s: float, metrics: SidecarMetrics, log: EventLog
) -> None:
    version: tuple[int, int, int] | str | None = None
    while True:
        try:
            key, current = read_secret_file(path)
        except OSError as exc:
            if version != "unreadable":  # once per episode, not every poll
                version = "unreadable"
                metrics.secret_rotations.labels("unreadable").inc()
                log.write(Kind.SECRET_ROTATION, result="unreadable", error=exc.strerror)
        else:
            if current != version:
                version = current
                result = secret.offer(key, time.time_ns())
                if result != "unchanged":
                    metrics.secret_rotations.labels(result).inc()
                    fields = (
                        {"bytes": len(key), "min_bytes": MIN_SECRET_BYTES} if result != "accepted" else {}
                    )
                    log.write(Kind.SECRET_ROTATION, result=result, **fields)
                    if result == "refused_short":
                        print(f"chaos-train sidecar: warning: rotated join secret in {path} refused: "
                              f"{len(key)} bytes < {MIN_SECRET_BYTES}; the old one stays", file=sys.stderr,
                              flush=True)  # fmt: skip
        for happened in secret.tick(time.time_ns()):
            metrics.secret_rotations.labels(happened).inc()
            log.write(Kind.SECRET_ROTATION, result=happened)
        await asyncio.sleep(poll_s)
