"""Schedules: pure time arithmetic that says when a periodic task fires next.

An `Interval` lies on a fixed grid aligned to the Unix epoch in UTC: with a period of five
minutes it fires at :00, :05, :10 … whatever the process start time or how long each run takes,
so it never drifts. The arithmetic is done in whole microseconds, which is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from taskflow.exceptions import ConfigurationError

__all__ = ["Interval", "Schedule", "interval"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@runtime_checkable
class Schedule(Protocol):
    """When a periodic task fires."""

    def next_after(self, moment: datetime) -> datetime:
        """Return the first fire time strictly after `moment` (an aware datetime), in UTC."""
        ...

    def describe(self) -> str:
        """Return a short human description, such as ``every 5m``."""
        ...


@dataclass(frozen=True, slots=True)
class Interval:
    """Fire every `period`, on the grid of multiples of `period` since the Unix epoch (UTC).

    Example:
        ```python
        Interval(timedelta(minutes=5)).next_after(datetime(2026, 1, 1, 12, 3, tzinfo=UTC))
        # datetime(2026, 1, 1, 12, 5, tzinfo=UTC)
        ```
    """

    period: timedelta

    def __post_init__(self) -> None:
        if not isinstance(self.period, timedelta):
            raise ConfigurationError(f"a schedule period is a timedelta, got {self.period!r}")
        if self.period <= timedelta(0):
            raise ConfigurationError(f"a schedule period must be positive, got {self.period}")

    def next_after(self, moment: datetime) -> datetime:
        if moment.tzinfo is None:
            raise ValueError(f"next_after() needs an aware datetime, got the naive {moment}")
        step = self.period // _MICROSECOND
        elapsed = (moment - EPOCH) // _MICROSECOND
        return EPOCH + _MICROSECOND * ((elapsed // step + 1) * step)

    def describe(self) -> str:
        return f"every {_short(self.period)}"


def interval(
    every: timedelta | float | None = None,
    *,
    seconds: float = 0,
    minutes: float = 0,
    hours: float = 0,
    days: float = 0,
) -> Interval:
    """Build an `Interval` from a timedelta, a number of seconds, or unit keywords (which add up).

    Raises:
        ConfigurationError: when no period, both forms, a non-number, or a non-positive or
            non-finite period is given.
    """
    given = {"seconds": seconds, "minutes": minutes, "hours": hours, "days": days}
    for unit, amount in given.items():
        if not _is_number(amount):
            raise ConfigurationError(f"{unit}= is a number, got {amount!r}")
    if every is not None and any(given.values()):
        raise ConfigurationError("give the period either positionally or with seconds=/minutes=/…")
    if every is None:
        if not any(given.values()):
            raise ConfigurationError(
                "a periodic task needs a period: every(seconds=…) or a timedelta"
            )
        return Interval(_timedelta(**given))
    if isinstance(every, timedelta):
        return Interval(every)
    if not _is_number(every):
        raise ConfigurationError(f"a period is a timedelta or a number of seconds, got {every!r}")
    return Interval(_timedelta(seconds=every))


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _timedelta(**units: float) -> timedelta:
    try:
        return timedelta(**units)
    except (ValueError, OverflowError) as exc:  # NaN, infinity, beyond timedelta's range
        raise ConfigurationError(f"a period must be a finite length of time: {exc}") from None


def _short(period: timedelta) -> str:
    micros = period // _MICROSECOND
    for size, unit in ((86_400_000_000, "d"), (3_600_000_000, "h"), (60_000_000, "m")):
        if micros % size == 0:
            return f"{micros // size}{unit}"
    whole, fraction = divmod(micros, 1_000_000)
    return f"{whole}.{fraction:06d}".rstrip("0").rstrip(".") + "s"  # exact, unlike float formats
