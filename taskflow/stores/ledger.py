"""The offset ledger: what a consumer group has finished, per partition, in a few keys.

A message consumed without an explicit idempotency key is known by its topic, partition and
offset. Per partition, the consumer always knows an offset below which every record is finished
(handled, skipped or dead-lettered): its commit position. The ledger keeps that *base* in the
store, plus the few offsets at or above it that finished out of order (key ordering), so a record
delivered again is found done without a key of its own. Its size follows the records in flight,
never the history: a million records leave one small hash per partition.

Records below the base that were never delivered (offsets a compacted or transactional topic
skips) are simply not there to be asked about, so gaps in offsets need no care.

While a consumer holds a partition it holds the partition's *lease* too: a claim takes it, every
write renews it, `release` gives it up when the partition leaves. Another consumer asking about
the partition meanwhile (the next owner, during a rebalance) is told to wait (`held_for`), so one
record never runs in two places at once; a consumer that died stops renewing, and its lease runs
out. A write by an owner whose lease was taken over is refused and changes nothing.

A consumer group reset by an operator to an earlier offset does not run the records below the
base again: they are finished, as far as the ledger knows. To run them again, delete the group's
ledger keys too (``taskflow:{<group>}:offsets:*``; see `taskflow.stores.keys`). A reset forward
simply moves the base on with the first commit.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from taskflow.message import TopicPartition

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline

__all__ = ["LedgerState", "OffsetLedger", "Progress", "Span", "TransactionalLedger"]


@dataclass(frozen=True, slots=True)
class Span:
    """The offsets of one partition a fetched batch holds: `first` to `last`, inclusive."""

    first: int
    last: int


@dataclass(frozen=True, slots=True)
class LedgerState:
    """What a claim found for one partition.

    Attributes:
        held_for: 0.0 when the partition's lease is now the caller's; otherwise the seconds left
            on another owner's lease, and nothing else is known.
        base: Every offset below it is finished; -1 when nothing is recorded.
        finished: Offsets at or above `base`, within the asked span, that are finished too.
    """

    held_for: float = 0.0
    base: int = -1
    finished: frozenset[int] = frozenset()

    @property
    def held(self) -> bool:
        """True when another owner holds the partition."""
        return self.held_for > 0.0

    def done(self, offset: int) -> bool:
        """True when the record at `offset` is finished."""
        return offset < self.base or offset in self.finished


@dataclass(frozen=True, slots=True)
class Progress:
    """What one write adds for a partition.

    Attributes:
        base: The new base (every offset below it finished), or None to leave it.
        finished: Offsets at or above it finished out of order.
    """

    base: int | None = None
    finished: Sequence[int] = ()


@runtime_checkable
class OffsetLedger(Protocol):
    """Finished offsets per partition of a consumer group, and the partition leases.

    Every call about one group is one round trip, whatever the number of partitions. Each raises
    `taskflow.StoreError` when the store cannot answer. Times are seconds.
    """

    async def claim(
        self,
        group: str,
        spans: Mapping[TopicPartition, Span],
        owner: str,
        lease: float,
        progress: Mapping[TopicPartition, Progress] | None = None,
        retention: float = 0.0,
    ) -> dict[TopicPartition, LedgerState]:
        """Take (or renew) each partition's lease for `owner`, and say what is finished in its
        span; a partition held by another owner answers `held_for` and is not taken.

        `progress` is recorded first, in the same call, as `record` would (a consumer sends what
        finished since its last write with its next batch's claim); the answer then covers its
        partitions too.
        """
        ...

    async def record(
        self,
        group: str,
        progress: Mapping[TopicPartition, Progress],
        owner: str,
        lease: float,
        retention: float,
    ) -> dict[TopicPartition, bool]:
        """Add `progress` and renew the leases (an empty `Progress` only renews); False, with
        nothing written, where another owner holds the partition. The ledger of a partition
        is kept `retention` seconds after its last write."""
        ...

    async def release(self, group: str, partitions: Collection[TopicPartition], owner: str) -> None:
        """Give up `owner`'s leases on `partitions`, so their next owner starts at once."""
        ...


@runtime_checkable
class TransactionalLedger(Protocol):
    """A ledger that writes a handler's own effects atomically with its record's finish."""

    def transaction(self) -> Pipeline:
        """A fresh pipeline to queue effects on; the ledger executes it, never the handler."""
        ...

    async def record_with(
        self,
        group: str,
        tp: TopicPartition,
        offset: int,
        owner: str,
        lease: float,
        retention: float,
        effects: Pipeline,
    ) -> bool:
        """Apply `effects` and record `offset` finished, atomically; False (nothing applied)
        when another owner holds the partition."""
        ...
