"""Our side of Dhan's order rate limit (about 10 orders/s): an async token bucket.

A multi-leg alert or several alerts at once must not trip DH-904, because a rate-limited leg in the middle of a
bracket leaves it half placed. Waiting a few hundred milliseconds here is cheaper. Hand-written (twenty lines)
rather than a dependency; the clock and sleep are injectable so tests need no real waiting.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable


_EPSILON: Final = 1e-9
_MIN_DELAY_S: Final = 1e-3


class TokenBucket:
    """`rate` tokens per second, at most `rate` (at least one) in the bucket; callers are served in order."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._rate = rate
        self._capacity = max(rate, 1.0)
        self._tokens = self._capacity
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = asyncio.Lock()

    @property
    def rate(self) -> float:
        return self._rate

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self._capacity, self._tokens + (now - self._updated) * self._rate)
        self._updated = now

    async def acquire(self) -> float:
        """Take one token, waiting for it if needed. Returns the seconds waited."""
        waited = 0.0
        async with self._lock:
            self._refill()
            while self._tokens < 1 - _EPSILON:  # float refill may land a hair below 1: never spin on it
                delay = max((1 - self._tokens) / self._rate, _MIN_DELAY_S)
                await self._sleep(delay)
                waited += delay
                self._refill()
            self._tokens = max(self._tokens - 1, 0.0)
        return waited
