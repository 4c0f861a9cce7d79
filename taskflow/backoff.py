"""Exponential backoff with jitter: how long to wait before attempt N."""

from __future__ import annotations

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
        Backoff(initial=1, maximum=30).delay(3)   # about 4 seconds before the fourth attempt
        ```
    """

    initial: float = 1.0
    maximum: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ConfigurationError(
                f"backoff needs 0 < initial <= maximum, got {self.initial} and {self.maximum}"
            )
        if self.multiplier < 1:
            raise ConfigurationError(f"backoff multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter < 1:
            raise ConfigurationError(f"backoff jitter is a fraction in [0, 1), got {self.jitter}")

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the `failures`-th consecutive failure (1-based)."""
        exponent = min(max(failures - 1, 0), 64)
        base = min(self.initial * self.multiplier**exponent, self.maximum)
        if not self.jitter:
            return base
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return min(base * (1 + spread), self.maximum)
