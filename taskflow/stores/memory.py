"""An in-process idempotency store with the Redis store's semantics, for tests and dev.

Claims live in a dict in this process: other processes do not see them and a restart forgets
them, so it deduplicates only within one process. It says so in a log line on first use.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from taskflow.stores.base import Claim, ClaimOutcome
from taskflow.stores.memory_ledger import MemoryOffsetLedger

__all__ = ["MemoryIdempotencyStore"]

logger = logging.getLogger("taskflow.idempotency")

_DONE = "done:"
_SWEEP_EVERY = 1000  # claims between sweeps of expired keys, so the dict does not only grow


class MemoryIdempotencyStore:
    """Claims and done marks in a dict, with leases on a monotonic clock.

    Args:
        clock: Seconds on a monotonic clock; tests pass one they can move. Default
            `time.monotonic`.

    Example:
        ```python
        app = App("billing", idempotency_store=MemoryIdempotencyStore())
        ```
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._entries: dict[str, tuple[str, float]] = {}  # key: (value, expires at)
        self._announced = False
        self._claims = 0
        self.ledger = MemoryOffsetLedger(clock, on_first_use=self._announce)
        """Where messages without an explicit key are known by their offsets."""

    def __repr__(self) -> str:
        return f"MemoryIdempotencyStore({len(self._entries)} keys)"

    def __len__(self) -> int:
        now = self.clock()
        return sum(1 for _, expires in self._entries.values() if expires > now)

    async def claim(self, key: str, owner: str, lease: float) -> ClaimOutcome:
        """Claim `key` for `owner` for `lease` seconds, unless it is done or claimed."""
        self._announce()
        self._claims += 1
        if self._claims % _SWEEP_EVERY == 0:
            self._sweep()
        value = self._value(key)
        if value is None or value == owner:  # free, or our own earlier claim
            self._entries[key] = (owner, self.clock() + lease)
            return ClaimOutcome.CLAIMED
        return ClaimOutcome.DONE if value.startswith(_DONE) else ClaimOutcome.IN_PROGRESS

    async def complete(self, key: str, owner: str, retention: float) -> bool:
        """Mark `owner`'s claim done for `retention` seconds; False when the claim was lost."""
        if self._value(key) != owner:
            return False
        self._entries[key] = (_DONE + owner, self.clock() + retention)
        return True

    async def release(self, key: str, owner: str) -> bool:
        """Drop `owner`'s claim so `key` can be claimed again; False when it was not theirs."""
        if self._value(key) != owner:
            return False
        del self._entries[key]
        return True

    async def extend(self, key: str, owner: str, lease: float) -> bool:
        """Renew `owner`'s claim for `lease` seconds from now; False when the claim was lost."""
        if self._value(key) != owner:
            return False
        self._entries[key] = (owner, self.clock() + lease)
        return True

    async def remaining(self, key: str) -> float:
        """Seconds left before `key`'s claim or done mark expires; 0.0 when there is none."""
        entry = self._entries.get(key)
        return max(0.0, entry[1] - self.clock()) if entry else 0.0

    async def claim_many(self, keys: Sequence[str], owner: str, lease: float) -> list[ClaimOutcome]:
        """`claim` each of `keys` for `owner`; the outcomes in key order."""
        return [await self.claim(key, owner, lease) for key in keys]

    async def complete_many(self, claims: Sequence[Claim], retention: float) -> list[bool]:
        """`complete` each (key, owner) claim; False where it was lost."""
        return [await self.complete(key, owner, retention) for key, owner in claims]

    async def release_many(self, claims: Sequence[Claim]) -> list[bool]:
        """`release` each (key, owner) claim; False where it was not theirs."""
        return [await self.release(key, owner) for key, owner in claims]

    def _announce(self) -> None:
        """Say once that claims stay in this process."""
        if not self._announced:
            self._announced = True
            logger.warning(
                "idempotency uses the in-process store: claims are not shared with other "
                "processes and are forgotten on restart; configure Redis for more than one process"
            )

    def _sweep(self) -> None:
        now = self.clock()
        for key in [key for key, (_, expires) in self._entries.items() if expires <= now]:
            del self._entries[key]

    def _value(self, key: str) -> str | None:
        """The live value at `key`, dropping it first if it has expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            del self._entries[key]
            return None
        return entry[0]
