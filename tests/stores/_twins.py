"""What the store contract suites share: the deployments they run on, and a clock to drive."""

from __future__ import annotations

import pytest

from tests._redis import DEPLOYMENTS

TWINS = ["memory", *(pytest.param(name, marks=pytest.mark.redis) for name in DEPLOYMENTS)]
"""The memory twin, then each Redis deployment (single, cluster, Sentinel)."""


class FakeClock:
    """A monotonic clock for the memory twins that moves only when a test says so."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
