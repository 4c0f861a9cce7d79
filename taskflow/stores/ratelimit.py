"""The rate-limit store: a limit shared by every replica, as GCRA (the generic cell rate algorithm).

A limit keeps one number, its *theoretical arrival time* (TAT): when the next run would be due if
runs were spaced evenly one emission interval (1/rate) apart. `acquire` books a run when now is no
earlier than the TAT minus the tolerance, moving the TAT one interval on; otherwise it answers how
long to wait. After idle the TAT is in the past and starts again from now, so a pause never turns
into a burst.

`RedisRateLimitStore` keeps the TAT in Redis and reads the time from the Redis server, so every
replica shares the limit whatever its own clock says; `MemoryRateLimitStore` is its in-process
twin. `acquire` raises `taskflow.StoreError` when the store cannot answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["MemoryRateLimitStore", "RateLimitStore"]


@runtime_checkable
class RateLimitStore(Protocol):
    """Where shared rate limits live: `RedisRateLimitStore` or `MemoryRateLimitStore`."""

    async def acquire(self, key: str, interval: float, tolerance: float) -> float:
        """Book a run of the limit at `key` now (0.0), or the seconds to wait before asking again.

        Args:
            key: The limit (`taskflow.stores.keys.rate_limit`).
            interval: Seconds between evenly spaced runs (1/rate).
            tolerance: Seconds a run may come early.
        """
        ...


class MemoryRateLimitStore:
    """GCRA in a dict, on a monotonic clock: the Redis store's twin within one process.

    Args:
        clock: Seconds on a monotonic clock; tests pass one they can move.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._arrivals: dict[str, float] = {}

    def __repr__(self) -> str:
        return f"MemoryRateLimitStore({len(self._arrivals)} limits)"

    async def acquire(self, key: str, interval: float, tolerance: float) -> float:
        """Book a run now (0.0), or the seconds to wait before asking again."""
        now = self.clock()
        arrival = max(self._arrivals.get(key, now), now)
        allowed_at = arrival - tolerance
        if now < allowed_at:
            return allowed_at - now
        self._arrivals[key] = arrival + interval
        return 0.0
