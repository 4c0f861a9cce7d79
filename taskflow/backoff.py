"""Exponential backoff with jitter: how long to wait before attempt N."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from taskflow.exceptions import ConfigurationError

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Waits that start at `initial` seconds and multiply by `multiplier` up to `maximum`.

    Each wait is scattered by up to ±`jitter` (a fraction) so that many failing consumers do not
    retry in lockstep; the jitter never pushes a wait past `maximum`.

    Example:
        ```python
        Backoff(initial=1, maximum=30).delay(3)
        # about 4 seconds: the wait before the fourth attempt
        ```
    """

    initial: float = 1.0
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        for option in ("initial", "maximum", "multiplier", "jitter"):
            value = getattr(self, option)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(f"backoff {option} is a number, got {value!r}")
        if not 0 < self.initial <= self.maximum < math.inf:
            raise ConfigurationError(
                f"backoff needs 0 < initial <= maximum (finite), got {self.initial} and "
                f"{self.maximum}"
            )
        if not self.multiplier >= 1:  # written so that NaN fails too
            raise ConfigurationError(f"backoff multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter < 1:
            raise ConfigurationError(f"backoff jitter is a fraction in [0, 1), got {self.jitter}")

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `failures`-th consecutive failure (1-based)."""
        exponent = min(max(failures - 1, 0), 64)
        try:
            base = min(self.initial * self.multiplier**exponent, self.maximum)
        except OverflowError:  # a huge multiplier: the wait is long past the maximum anyway
            base = self.maximum
        if not self.jitter:
            return base
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return min(base * (1 + spread), self.maximum)
