"""A token bucket: the portable per-link rate limit used to emulate WAN links."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` bytes/s with ``burst`` bytes of credit; ``take`` waits until it may send."""

    def __init__(
        self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.burst = burst if burst is not None else max(64 * 1024, rate * 0.005)
        self.clock = clock
        self.tokens = self.burst
        self.stamp = clock()
        self._lock = asyncio.Lock()

    def delay_for(self, amount: int) -> float:
        """Pure part: seconds to wait before ``amount`` bytes may go (and debit them)."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= amount
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    async def take(self, amount: int) -> None:
        async with self._lock:  # one sender at a time keeps the link's order fair
            delay = self.delay_for(amount)
            if delay > 0:
                await asyncio.sleep(delay)
