"""Clocks: where periodic tasks read the time and wait for it.

The scheduled worker never calls `time` or `asyncio.sleep` directly; it asks a `Clock`. Production
uses `SystemClock`; tests pass `taskflow.testing.ManualClock` and drive time themselves.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock"]

# Wake at least this often while waiting, so a wall-clock step (NTP, VM resume) is noticed.
_MAX_NAP = 60.0


@runtime_checkable
class Clock(Protocol):
    """Tells the time and waits for a moment to come."""

    def now(self) -> datetime:
        """Return the current time as an aware UTC datetime."""
        ...

    async def sleep_until(self, moment: datetime) -> None:
        """Return once `now()` is at or after `moment`."""
        ...


class SystemClock:
    """The wall clock (UTC), waiting on the event loop's timer."""

    def now(self) -> datetime:
        """Return the current time as an aware UTC datetime."""
        return datetime.now(UTC)

    async def sleep_until(self, moment: datetime) -> None:
        """Return once `now()` is at or after `moment`."""
        while (delay := (moment - self.now()).total_seconds()) > 0:  # noqa: ASYNC110 - a timer
            await asyncio.sleep(min(delay, _MAX_NAP))
