"""Rate limits as values: how many runs per period, parsed from ``"100/s"`` or built directly."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import timedelta

from taskflow.exceptions import ConfigurationError

__all__ = ["RateLimit", "rate_limit"]

_UNITS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
}
_TEXT = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*([a-z]+)\s*")


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `count` runs per `per`, spread evenly (no double-rate burst after idle).

    Example:
        ```python
        RateLimit(100, per=timedelta(seconds=1))      # the same as rate_limit="100/s"
        ```
    """

    count: float
    per: timedelta = timedelta(seconds=1)

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int | float):
            raise ConfigurationError(f"a rate limit count is a number, got {self.count!r}")
        if not (math.isfinite(self.count) and self.count > 0):
            raise ConfigurationError(f"a rate limit count must be positive, got {self.count!r}")
        if not isinstance(self.per, timedelta) or self.per <= timedelta(0):
            raise ConfigurationError(
                f"a rate limit period must be a positive timedelta, got {self.per!r}"
            )

    @property
    def per_second(self) -> float:
        """The limit as runs per second."""
        return self.count / self.per.total_seconds()

    def __str__(self) -> str:
        return f"{self.count:g}/{self.per.total_seconds():g}s"


def rate_limit(value: RateLimit | str) -> RateLimit:
    """Parse ``"100/s"``, ``"30/m"``, ``"1000/h"`` (also ``sec``, ``min``, ``hour``), or pass a
    `RateLimit` through.

    Raises:
        ConfigurationError: naming the accepted forms; or, for a count of zero, saying so.
    """
    if isinstance(value, RateLimit):
        return value
    if isinstance(value, str) and (match := _TEXT.fullmatch(value.lower())):
        count, unit = match.groups()
        if unit in _UNITS:
            if float(count) == 0:
                raise ConfigurationError(f"a rate limit count must be positive, got {value!r}")
            return RateLimit(float(count), per=timedelta(seconds=_UNITS[unit]))
    raise ConfigurationError(
        f"unknown rate limit {value!r}: write '100/s', '30/m' or '1000/h', "
        "or pass RateLimit(count, per=timedelta(...))"
    )
