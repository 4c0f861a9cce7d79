"""The schedule store: tick claims, the no-overlap lease, and the records of each periodic task.

Every replica computes the same ticks; before running one it claims it, so each tick runs once.
A store answers, for one app's periodic tasks:

- `claim`: claim a tick for an owner and, when it is ours and no run holds the task's lease, take
  the lease and mark the last run as running, all at once (`TickClaim`). It also records the
  next tick. A tick's claim is never dropped after its run: it outlives the tick and expires.
- `acquire`, `renew`, `release`: the lease, held by one run (or one catch-up) at a time and
  checked against its owner token, so a run whose lease ran out never drops the next one's.
- `finish`: record how a run ended (`LastRun.outcome`) and release the lease.
- `last_run`, `next_run`, `claimer`, `set_next`: the records ``taskflow info`` reads.

`RedisScheduleStore` shares all this across the fleet (`taskflow.stores.keys` lists its keys);
`MemoryScheduleStore` is its in-process twin, for one process or ``fleet=False``. Each method raises
`taskflow.StoreError` when the store cannot answer. Times are seconds.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

__all__ = ["LastRun", "ScheduleStore", "TickClaim", "epoch"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class TickClaim(enum.Enum):
    """What claiming a tick found."""

    RUN = "run"
    """The tick is ours and so is the lease: run it."""
    ELSEWHERE = "elsewhere"
    """Another replica claimed the tick first."""
    BUSY = "busy"
    """The tick is ours, but a run of the task still holds the lease: the tick is skipped."""


@dataclass(frozen=True, slots=True)
class LastRun:
    """The last run of a periodic task.

    Attributes:
        tick: The tick it ran for (UTC).
        time: When it started (UTC).
        replica: Which replica ran it (``host:pid``).
        outcome: ``running``, ``ok``, ``failed``, ``cancelled`` or ``lost`` (its lease was lost,
            so it was cancelled).
        duration: Seconds it took; None while running.
    """

    tick: datetime
    time: datetime
    replica: str
    outcome: str
    duration: float | None


def epoch(moment: datetime) -> str:
    """`moment` as exact Unix seconds: ``1767225600``, or ``1767225600.5`` with a fraction."""
    whole, fraction = divmod((moment - _EPOCH) // _MICROSECOND, 1_000_000)
    return f"{whole}.{fraction:06d}".rstrip("0").rstrip(".") if fraction else str(whole)


@runtime_checkable
class ScheduleStore(Protocol):
    """Where tick claims, leases and run records live: `RedisScheduleStore` or
    `MemoryScheduleStore`."""

    app_name: str
    replica: str

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
        """Claim `tick` for `owner` for `ttl` seconds and, if it is ours, take the lease.

        A lease `owner` already holds (a catch-up run) counts as free. Returns what was found and
        who holds it: the claimer (ELSEWHERE), the lease holder (BUSY) or `owner` (RUN).
        """
        ...

    async def acquire(self, task: str, owner: str, lease: float) -> str | None:
        """Take the lease for `owner` unless a run holds it; None when taken, else the holder."""
        ...

    async def renew(self, task: str, owner: str, lease: float) -> bool:
        """Extend `owner`'s lease to `lease` seconds from now; False when it was lost."""
        ...

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
        """Record how the run of `tick` ended and (by default) release the lease; False when
        the lease was no longer `owner`'s."""
        ...

    async def release(self, task: str, owner: str) -> bool:
        """Drop `owner`'s lease; False when it was not theirs."""
        ...

    async def set_next(self, task: str, moment: datetime) -> None:
        """Record the next tick of `task`."""
        ...

    async def claimer(self, task: str, tick: datetime) -> str | None:
        """Who claimed `tick` (an owner token), or None when nobody has (or the claim expired)."""
        ...

    async def last_run(self, task: str) -> LastRun | None:
        """The last run of `task`, or None when it never ran (or the store forgot)."""
        ...

    async def next_run(self, task: str) -> datetime | None:
        """The next tick of `task` as the replicas last computed it, or None."""
        ...
