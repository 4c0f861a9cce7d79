"""The offset ledger in this process, with the Redis ledger's semantics, for tests and dev."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping

from taskflow.message import TopicPartition
from taskflow.stores.ledger import LedgerState, Progress, Span

__all__ = ["MemoryOffsetLedger"]

_Partition = tuple[str, TopicPartition]


class MemoryOffsetLedger:
    """Finished offsets and partition leases in dicts, on a monotonic clock.

    Args:
        clock: Seconds on a monotonic clock; tests pass one they can move.
        on_first_use: Called on the first claim (the store says once that it is in-process).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        on_first_use: Callable[[], None] | None = None,
    ) -> None:
        self.clock = clock
        self._on_first_use = on_first_use
        self._bases: dict[_Partition, int] = {}
        self._finished: dict[_Partition, set[int]] = {}
        self._expires: dict[_Partition, float] = {}  # when a partition's ledger is forgotten
        self._leases: dict[_Partition, tuple[str, float]] = {}  # (owner, expires at)

    def __repr__(self) -> str:
        return f"MemoryOffsetLedger({len(self._bases)} partitions)"

    async def claim(
        self,
        group: str,
        spans: Mapping[TopicPartition, Span],
        owner: str,
        lease: float,
        progress: Mapping[TopicPartition, Progress] | None = None,
        retention: float = 0.0,
    ) -> dict[TopicPartition, LedgerState]:
        """Record `progress`, take each partition's lease for `owner`, and say what is
        finished in each span."""
        if self._on_first_use is not None:
            self._on_first_use()
            self._on_first_use = None
        states = {}
        if progress:
            written = await self.record(group, progress, owner, lease, retention or lease)
            for tp, ok in written.items():
                at = (group, tp)
                states[tp] = (
                    LedgerState(base=self._base(at))
                    if ok
                    else LedgerState(held_for=self._held_by_other(at, owner))
                )
        for tp, span in spans.items():
            at = (group, tp)
            left = self._held_by_other(at, owner)
            if left:
                states[tp] = LedgerState(held_for=left)
                continue
            self._leases[at] = (owner, self.clock() + lease)
            base = self._base(at)
            finished = self._finished.get(at, set())
            found = frozenset(o for o in finished if span.first <= o <= span.last and o >= base)
            states[tp] = LedgerState(base=base, finished=found)
        return states

    async def record(
        self,
        group: str,
        progress: Mapping[TopicPartition, Progress],
        owner: str,
        lease: float,
        retention: float,
    ) -> dict[TopicPartition, bool]:
        """Add `progress` and renew the leases; False where another owner holds the partition."""
        written = {}
        for tp, step in progress.items():
            at = (group, tp)
            if self._held_by_other(at, owner):
                written[tp] = False
                continue
            self._leases[at] = (owner, self.clock() + lease)
            self._write(at, step)
            if at in self._bases or at in self._finished:
                self._expires[at] = self.clock() + retention
            written[tp] = True
        return written

    async def release(self, group: str, partitions: Collection[TopicPartition], owner: str) -> None:
        """Give up `owner`'s leases on `partitions`."""
        for tp in partitions:
            at = (group, tp)
            if at in self._leases and self._leases[at][0] == owner:
                del self._leases[at]

    def _write(self, at: _Partition, step: Progress) -> None:
        base = self._base(at)
        if step.base is not None and step.base > base:
            base = self._bases[at] = step.base
            if at in self._finished:
                self._finished[at] = {o for o in self._finished[at] if o >= base}
        above = [o for o in step.finished if o >= base]
        if above:
            self._finished.setdefault(at, set()).update(above)

    def _base(self, at: _Partition) -> int:
        expires = self._expires.get(at)
        if expires is not None and expires <= self.clock():
            self._bases.pop(at, None)
            self._finished.pop(at, None)
            del self._expires[at]
        return self._bases.get(at, -1)

    def _held_by_other(self, at: _Partition, owner: str) -> float:
        """Seconds left on another owner's lease of the partition; 0.0 when there is none."""
        held = self._leases.get(at)
        if held is None or held[0] == owner:
            return 0.0
        return max(0.0, held[1] - self.clock())
