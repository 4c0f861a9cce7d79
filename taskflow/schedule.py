"""Schedules: pure time arithmetic that says when a periodic task fires next.

An `Interval` lies on a fixed grid aligned to the Unix epoch in UTC: with a period of five
minutes it fires at :00, :05, :10 … whatever the process start time or how long each run takes,
so it never drifts. The arithmetic is done in whole microseconds, which is exact.

A `Cron` fires at the times a cron expression names in a time zone, as the croniter library
computes them (DST changes included), converted to UTC. Every replica computes the same ticks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Protocol, runtime_checkable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import (  # type: ignore[import-untyped, unused-ignore]
    CroniterBadCronError,
    CroniterBadDateError,
    croniter,
)

from taskflow.exceptions import ConfigurationError

__all__ = ["Cron", "Interval", "Schedule", "interval"]

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
        every_five = Interval(timedelta(minutes=5))
        every_five.next_after(datetime(2026, 1, 1, 12, 3, tzinfo=UTC))
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
        """Return the first fire time strictly after `moment` (an aware datetime), in UTC."""
        if moment.tzinfo is None:
            raise ValueError(f"next_after() needs an aware datetime, got the naive {moment}")
        step = self.period // _MICROSECOND
        elapsed = (moment - EPOCH) // _MICROSECOND
        return EPOCH + _MICROSECOND * ((elapsed // step + 1) * step)

    def describe(self) -> str:
        """Return a short description, such as ``every 5m``."""
        return f"every {_short(self.period)}"


@dataclass(frozen=True, slots=True)
class Cron:
    """Fire at the times a cron expression names, read in time zone `tz`, as croniter computes them.

    Five fields (``minute hour day-of-month month day-of-week``), a sixth for seconds and a
    seventh for the year (croniter's order: seconds come *after* the day of the week), and
    croniter's extensions: ``L``, ``W``, ``#``, ``?``, ``@hourly``/``@daily``/…, and ``H`` (a
    value hashed from `hash_id`, so tasks spread out yet every replica agrees). ``R`` (random)
    is refused: each replica would pick its own ticks.

    Across DST changes croniter's rules apply: a time that does not exist (spring forward)
    fires at the first moment after the gap when the expression names the hour, and is skipped
    when the hour is ``*``; a time that happens twice (fall back) fires twice, once per UTC offset.

    Args:
        expr: The cron expression.
        tz: An IANA time zone name (``"Europe/Berlin"``) or a tzinfo; default UTC.
        hash_id: What ``H`` hashes; `App.cron` passes the app and task name.

    Raises:
        ConfigurationError: for an invalid expression or time zone, or one that never fires.

    Example:
        ```python
        nightly = Cron("30 2 * * *", tz="Europe/Berlin")
        nightly.next_after(datetime(2026, 7, 1, tzinfo=UTC))
        # datetime(2026, 7, 1, 0, 30, tzinfo=UTC): 02:30 in Berlin (UTC+2)
        ```
    """

    expr: str
    tz: tzinfo
    hash_id: str | None

    def __init__(self, expr: str, tz: str | tzinfo = "UTC", hash_id: str | None = None) -> None:
        object.__setattr__(self, "expr", _cron_expr(expr))
        object.__setattr__(self, "tz", _zone(tz))
        object.__setattr__(self, "hash_id", _hash_id(self.expr, hash_id))
        try:
            self.next_after(datetime.now(UTC))
        except CroniterBadDateError:
            raise ConfigurationError(f"the cron expression {expr!r} never fires again") from None

    @property
    def hashed(self) -> bool:
        """True when the expression uses ``H``, so its ticks depend on `hash_id`."""
        return _uses(self.expr, "h")

    def next_after(self, moment: datetime) -> datetime:
        """Return the first fire time strictly after `moment` (an aware datetime), in UTC."""
        if moment.tzinfo is None:
            raise ValueError(f"next_after() needs an aware datetime, got the naive {moment}")
        local = moment.astimezone(self.tz)
        fire: datetime = croniter(self.expr, local, hash_id=self.hash_id).get_next(datetime)
        return fire.astimezone(UTC)

    def describe(self) -> str:
        """Return a short description, such as ``cron '*/5 * * * *' in Europe/Berlin``."""
        return f"cron {self.expr!r} in {self.tz}"


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


# One piece of a field that croniter hashes (H) or draws at random (R), e.g. ``H(0-29)/5``.
_HASHED = re.compile(r"(?P<kind>[hr])(\(\d+-\d+\))?(/\d+)?", re.ASCII)


def _cron_expr(expr: object) -> str:
    if not isinstance(expr, str):
        raise ConfigurationError(f"a cron expression is a string, got {expr!r}")
    text = " ".join(expr.split())
    if _uses(text, "r"):
        raise ConfigurationError(
            f"the cron expression {expr!r} uses R (random), which each replica would draw "
            "differently; use H, which every replica hashes alike"
        )
    try:
        croniter.expand(text, hash_id=b"taskflow")  # syntax and ranges; H is checked later
    except CroniterBadCronError as exc:
        raise ConfigurationError(f"invalid cron expression {expr!r}: {exc}") from None
    return text


def _uses(expr: str, kind: str) -> bool:
    pieces = (piece for part in expr.lower().split() for piece in part.split(","))
    return any((m := _HASHED.fullmatch(piece)) and m["kind"] == kind for piece in pieces)


def _hash_id(expr: str, hash_id: str | None) -> str | None:
    if hash_id is not None and (not isinstance(hash_id, str) or not hash_id):
        raise ConfigurationError(f"hash_id is a non-empty string, got {hash_id!r}")
    if hash_id is None and _uses(expr, "h"):
        raise ConfigurationError(
            f"the H in the cron expression {expr!r} needs hash_id= (App.cron passes the task name)"
        )
    return hash_id


def _zone(tz: str | tzinfo) -> tzinfo:
    if isinstance(tz, tzinfo):
        return tz
    if not isinstance(tz, str):
        raise ConfigurationError(f"tz is a time zone name such as 'Europe/Berlin', got {tz!r}")
    if tz.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigurationError(
            f"unknown time zone {tz!r}: use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None
