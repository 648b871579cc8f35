"""Waiting in tests for a condition that other processes bring about, with a deadline."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


async def until(
    what: str,
    check: Callable[[], Any],
    timeout: float,
    describe: Callable[[], str] = str,
    every_s: float = 0.2,
) -> Any:
    """Poll ``check`` until it returns something truthy (returned), or fail after ``timeout``
    saying what was awaited and what ``describe`` says. Checks run in a thread: they may call
    a synchronous client of a server that serves on this event loop (the API emulator)."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(check)
        if value:
            return value
        if time.monotonic() > deadline:
            detail = await asyncio.to_thread(describe)
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; {detail}")
        await asyncio.sleep(every_s)


async def line_in(path: Path, pattern: str, timeout: float) -> re.Match[str]:
    """The first match of ``pattern`` (a line, with re.MULTILINE) in the file ``path``, which
    another process writes (a sidecar's stderr): polled until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        text = path.read_text() if path.exists() else ""
        found = re.search(pattern, text, re.MULTILINE)
        if found:
            return found
        assert time.monotonic() < deadline, f"no line matching {pattern!r} in {path}:\n{text or '(empty)'}"
        await asyncio.sleep(0.1)
