"""The in-process schedule store: the Redis schedule store's twin, inside one process.

Claims, the lease and run records live in dicts: other processes do not see them and a restart
forgets them. The scheduler uses it for a single process (no Redis, or ``fleet=False``), so a tick
still never overlaps a run of its task still going; replicas sharing one instance behave as a fleet
sharing Redis does, which is how the fleet's logic is tested without Redis.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from taskflow.stores.lease import REPLICA
from taskflow.stores.schedule import LastRun, TickClaim, epoch

__all__ = ["MemoryScheduleStore"]

_SWEEP_EVERY = 1000  # claims between sweeps of expired ticks, so the dict does not only grow


class MemoryScheduleStore:
    """Tick claims, leases and run records of one app's periodic tasks, in this process.

    Args:
        app_name: The app's name.
        clock: Seconds on a clock that claims and leases expire by; default `time.monotonic`.
            The runner passes the app's clock, so a driven clock drives expiry too.
        replica: The name run records give this process; default ``host:pid``.
    """

    def __init__(
        self,
        app_name: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        replica: str = REPLICA,
    ) -> None:
        self.app_name = app_name
        self.replica = replica
        self.clock = clock
        self._expiring: dict[tuple[str, str], tuple[str, float]] = {}  # (task, what): value, until
        self._last: dict[str, LastRun] = {}
        self._next: dict[str, datetime] = {}
        self._claims = 0

    def __repr__(self) -> str:
        return f"MemoryScheduleStore({self.app_name!r})"

    async def claim(
        self,
        task: str,
        tick: datetime,
        owner: str,
        *,
        ttl: float,
        lease: float,
        started: datetime,
        next_tick: datetime,
    ) -> tuple[TickClaim, str]:
        """Claim `tick` for `owner` for `ttl` seconds and, if it is ours, take the lease."""
        self._claims += 1
        if self._claims % _SWEEP_EVERY == 0:
            self._sweep()
        self._next[task] = _utc(next_tick)
        claimer = self._get(task, epoch(tick))
        if claimer is not None:
            return TickClaim.ELSEWHERE, claimer
        self._set(task, epoch(tick), owner, ttl)
        holder = self._get(task, "running")
        if holder is not None and holder != owner:
            return TickClaim.BUSY, holder
        self._set(task, "running", owner, lease)
        self._last[task] = LastRun(_utc(tick), _utc(started), self.replica, "running", None)
        return TickClaim.RUN, owner

    async def acquire(self, task: str, owner: str, lease: float) -> str | None:
        """Take the lease for `owner` unless a run holds it; None when taken, else the holder."""
        holder = self._get(task, "running")
        if holder is not None:
            return holder
        self._set(task, "running", owner, lease)
        return None

    async def renew(self, task: str, owner: str, lease: float) -> bool:
        """Extend `owner`'s lease to `lease` seconds from now; False when it was lost."""
        if self._get(task, "running") != owner:
            return False
        self._set(task, "running", owner, lease)
        return True

    async def finish(
        self,
        task: str,
        owner: str,
        tick: datetime,
        outcome: str,
        duration: float,
        *,
        release: bool = True,
    ) -> bool:
        """Record how the run of `tick` ended and (by default) release the lease."""
        kept = self._get(task, "running") == owner
        if kept and release:
            del self._expiring[task, "running"]
        last = self._last.get(task)
        if last is not None and last.tick == _utc(tick) and last.replica == self.replica:
            self._last[task] = LastRun(
                last.tick, last.time, last.replica, outcome, round(duration, 3)
            )
        return kept

    async def release(self, task: str, owner: str) -> bool:
        """Drop `owner`'s lease; False when it was not theirs."""
        if self._get(task, "running") != owner:
            return False
        del self._expiring[task, "running"]
        return True

    async def set_next(self, task: str, moment: datetime) -> None:
        """Record the next tick of `task`."""
        self._next[task] = _utc(moment)

    async def claimer(self, task: str, tick: datetime) -> str | None:
        """Who claimed `tick`, or None when nobody has (or the claim expired)."""
        return self._get(task, epoch(tick))

    async def last_run(self, task: str) -> LastRun | None:
        """The last run of `task`, or None when it never ran in this process."""
        return self._last.get(task)

    async def next_run(self, task: str) -> datetime | None:
        """The next tick of `task` as last recorded, or None."""
        return self._next.get(task)

    def _get(self, task: str, what: str) -> str | None:
        entry = self._expiring.get((task, what))
        if entry is None:
            return None
        if entry[1] <= self.clock():
            del self._expiring[task, what]
            return None
        return entry[0]

    def _set(self, task: str, what: str, value: str, seconds: float) -> None:
        self._expiring[task, what] = (value, self.clock() + seconds)

    def _sweep(self) -> None:
        now = self.clock()
        for key in [key for key, (_, until) in self._expiring.items() if until <= now]:
            del self._expiring[key]


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC)
