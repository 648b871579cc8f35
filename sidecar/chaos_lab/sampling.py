"""Sampling processes from /proc on a thread while a benchmark runs (Linux only)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
STOP_S = 5.0  # a sample reads a few small files: a sampler thread ends within this long


class Sampler:
    """Calls :meth:`sample` every ``every_s`` on a thread of its own while its ``with`` block
    runs; a sample that returns False ends the sampling. A sample that raises ends it too, and
    the ``with`` block then raises :class:`SamplingFailed`: a benchmark must not report curves
    cut short as if they were whole."""

    def __init__(self, every_s: float, name: str) -> None:
        self.every_s = every_s
        self.name = name
        self.error: Exception | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._stop.set()
        self._thread.join(STOP_S)
        if self.error is not None and exc_type is None:
            raise SamplingFailed(f"sampling {self.name} failed: {self.error!r}") from self.error

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                if self.sample() is False:
                    return
            except Exception as exc:  # reported by __exit__ on the benchmark's thread
                self.error = exc
                return

    def sample(self) -> bool | None:
        raise NotImplementedError


class SamplingFailed(RuntimeError):
    pass


def resources(pid: int) -> dict[str, float] | None:
    """Resident memory (MiB), open file descriptors and threads of process ``pid``; None once
    it is gone."""
    try:
        rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        threads = len(os.listdir(f"/proc/{pid}/task"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError, IndexError):
        return None
    return {"rss_mib": rss_pages * PAGE / 2**20, "fds": fds, "threads": threads}


def children_cpu_s(kinds: dict[str, str]) -> dict[str, float] | None:
    """CPU seconds (user + system) of this process's live children by kind (the first of
    ``kinds``, command-line fragment -> kind, found in its command line, else "other"), and of
    this process itself ("harness"); None without /proc."""
    me = os.getpid()
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return None
    totals: dict[str, float] = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            if pid != me and int(fields[1]) != me:  # fields[1]: the parent's pid
                continue
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        kind = "harness" if pid == me else next((k for m, k in kinds.items() if m in cmdline), "other")
        totals[kind] = totals.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    return totals
