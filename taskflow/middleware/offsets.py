"""Idempotency by offset: a consumer's claims on its partitions, and its writes to the ledger.

A message without an explicit idempotency key is known by its partition and offset, and what
is finished lives in the partition's ledger (`taskflow.stores.ledger`): a base below which all
is finished, and the offsets above it finished out of order. `OffsetClaims` is one consumer
registration's side of it:

- a fetched batch is claimed in one call: each partition's lease is taken, and what the ledger
  says is finished in the batch comes back (`prefetch`, `state`);
- records that ran are recorded with each partition's base, the consumer's commit position read
  when the write goes out (`finished`). The next batch's claim carries them, so a busy consumer
  makes one round trip per fetched batch; when no batch comes within `LINGER`, they go on
  their own. Every call renews the leases of all partitions held, and a write goes out a third
  of a lease after the last call even with nothing to record, so an idle partition keeps its
  lease for as long as it is assigned here;
- before a revoke or stop commits, the writes still due are made (`flush`), and then the
  partitions' leases are given up (`release`), so their next owner starts at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING

from taskflow.exceptions import StoreError
from taskflow.message import Message, TopicPartition
from taskflow.stores.lease import new_owner
from taskflow.stores.ledger import (
    LedgerState,
    OffsetLedger,
    Progress,
    Span,
    TransactionalLedger,
)

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline

__all__ = ["FinishedBelow", "OffsetClaims"]

logger = logging.getLogger("taskflow.idempotency")

FinishedBelow = Callable[[TopicPartition], "int | None"]
"""The consumer's commit position of a partition: every offset below it is finished."""

STORE_RETRY = 1.0
FLUSH_TIMEOUT = 5.0
LINGER = 0.02
"""Seconds a finished record waits for the next batch's claim to carry it before it is written
on its own: what a crash can cost in records run again, beside those running."""


def _unknown(tp: TopicPartition) -> int | None:
    return None


def _loop_time(monotonic: float) -> float:
    """The event loop's time at the `time.monotonic()` instant `monotonic`."""
    return asyncio.get_running_loop().time() + (monotonic - time.monotonic())


class OffsetClaims:
    """One consumer registration's partition leases and ledger writes; see the module docstring.

    Args:
        ledger: Where finished offsets live.
        group: The consumer group.
        lease: Seconds a partition's lease lasts unless renewed.
        retention: Seconds a partition's ledger is kept after its last write.
        name: The registration's name, for log lines.
        on_lost: Called with a partition and how many of its finished records could not be
            written because another consumer holds it.
    """

    def __init__(
        self,
        ledger: OffsetLedger,
        group: str,
        *,
        lease: float,
        retention: float,
        name: str,
        on_lost: Callable[[TopicPartition, int], None],
    ) -> None:
        self.ledger = ledger
        self.group = group
        self.lease = lease
        self.retention = retention
        self.name = name
        self.on_lost = on_lost
        self.owner = new_owner()
        self.finished_below: FinishedBelow = _unknown
        self._states: dict[TopicPartition, tuple[Span, LedgerState]] = {}  # partitions held
        self._pending: dict[TopicPartition, list[int]] = {}
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._failing = False  # a write failed: its retries are logged at debug
        self._unanswered = False  # the last call failed: no claim is trusted until one answers
        self._synced = 0.0  # time.monotonic() of the last call that renewed every lease

    def __repr__(self) -> str:
        return f"OffsetClaims({self.group!r}, {len(self._states)} partitions held)"

    # -- claiming --------------------------------------------------------------------------

    async def prefetch(self, messages: Sequence[Message]) -> None:
        """Claim the partitions of a fetched batch, and learn what of it is finished.

        Raises:
            StoreError: when the ledger does not answer.
        """
        spans: dict[TopicPartition, Span] = {}
        for message in messages:
            tp = TopicPartition(message.topic, message.partition)
            span = spans.get(tp)
            spans[tp] = Span(message.offset if span is None else span.first, message.offset)
        await self._claim(spans)

    async def state(self, message: Message) -> LedgerState:
        """What the ledger says of `message`'s partition: from the batch's claim while it can be
        trusted, or asked now.

        The claim is trusted while the store answered its last call, within a third of a lease:
        the partition's lease is then surely still this consumer's. Once a call has failed, every
        message asks, so nothing runs while the store is down (`on_store_error` decides).

        Raises:
            StoreError: when the ledger does not answer.
        """
        tp = TopicPartition(message.topic, message.partition)
        known = self._states.get(tp)
        if (
            known is not None
            and known[0].first <= message.offset <= known[0].last
            and not self._unanswered
            and time.monotonic() < self._synced + self.lease / 3
        ):
            return known[1]
        return (await self._claim({tp: Span(message.offset, message.offset)}))[tp]

    async def _claim(self, spans: dict[TopicPartition, Span]) -> dict[TopicPartition, LedgerState]:
        """Claim `spans`, each widened to cover what is known of its partition already (records
        of earlier batches still waiting to run), carrying what finished since the last call."""
        spans = {tp: self._widened(tp, span) for tp, span in spans.items()}
        async with self._lock:
            pending, progress = self._take_pending()
            try:
                states = await self.ledger.claim(
                    self.group, spans, self.owner, self.lease, progress, self.retention
                )
            except StoreError:
                self._put_back(pending)
                self._unanswered = True
                raise
            self._synced = time.monotonic()
            self._unanswered = False
        self._written(pending, {tp: not state.held for tp, state in states.items()})
        for tp, span in spans.items():
            state = states[tp]
            if state.held:
                self._states.pop(tp, None)
            else:
                self._states[tp] = (span, state)
        if self._states and self._writer is None:
            self._writer = asyncio.create_task(self._write_loop(), name=f"{self.name}:ledger")
        return states

    def _widened(self, tp: TopicPartition, span: Span) -> Span:
        known = self._states.get(tp)
        if known is None:
            return span
        return Span(min(known[0].first, span.first), max(known[0].last, span.last))

    # -- recording -------------------------------------------------------------------------

    def finished(self, message: Message) -> None:
        """`message` ran: record it with the next write."""
        tp = TopicPartition(message.topic, message.partition)
        self._pending.setdefault(tp, []).append(message.offset)
        self._wake.set()

    async def record_with(self, message: Message, effects: Pipeline) -> bool:
        """Write `effects` and `message`'s finish atomically; False when the lease was lost.

        Raises:
            StoreError: when the ledger does not answer (whether it applied them is unknown).
        """
        assert isinstance(self.ledger, TransactionalLedger)
        tp = TopicPartition(message.topic, message.partition)
        return await self.ledger.record_with(
            self.group, tp, message.offset, self.owner, self.lease, self.retention, effects
        )

    async def _write_loop(self) -> None:
        """Write what finished when no claim carried it, and renew the leases when idle."""
        try:
            while self._states or self._pending:
                await self._until_due()
                if not await self._write():
                    await asyncio.sleep(STORE_RETRY)
        finally:
            self._writer = None

    async def _until_due(self) -> None:
        """Wait for a finish and then `LINGER` (a claim may carry it meanwhile), or until a
        third of a lease has passed since the last call."""
        if not self._pending:
            try:
                async with asyncio.timeout_at(_loop_time(self._synced + self.lease / 3)):
                    await self._wake.wait()
            except TimeoutError:
                return
        self._wake.clear()
        await asyncio.sleep(LINGER)

    async def _write(self) -> bool:
        """One write of what is due; False when the store did not answer."""
        async with self._lock:
            if not self._pending and time.monotonic() < self._synced + self.lease / 3:
                return True  # a claim carried it all, and renewed the leases
            pending, progress = self._take_pending()
            if not progress:
                return True
            try:
                written = await self.ledger.record(
                    self.group, progress, self.owner, self.lease, self.retention
                )
            except StoreError as exc:
                self._put_back(pending)
                self._unanswered = True
                self._report_failure(exc, sum(map(len, pending.values())))
                return False
            self._synced = time.monotonic()
            self._unanswered = False
        self._written(pending, written)
        return True

    def _take_pending(
        self,
    ) -> tuple[dict[TopicPartition, list[int]], dict[TopicPartition, Progress]]:
        """What finished since the last call, and the progress of every partition held."""
        pending, self._pending = self._pending, {}
        tps = {*self._states, *pending}
        return pending, {tp: self._progress(tp, pending.get(tp, ())) for tp in tps}

    def _put_back(self, pending: dict[TopicPartition, list[int]]) -> None:
        for tp, offsets in pending.items():
            self._pending.setdefault(tp, [])[:0] = offsets

    def _written(
        self, pending: dict[TopicPartition, list[int]], written: dict[TopicPartition, bool]
    ) -> None:
        """After a call that recorded: drop the partitions another consumer holds now."""
        if self._failing:
            self._failing = False
            logger.info("%s: the held-back finished offsets are written", self.name)
        for tp, ok in written.items():
            if not ok:
                self._states.pop(tp, None)
                if pending.get(tp):
                    self.on_lost(tp, len(pending[tp]))

    def _progress(self, tp: TopicPartition, offsets: Sequence[int]) -> Progress:
        base = self.finished_below(tp)
        above = [o for o in offsets if base is None or o >= base]
        return Progress(base, above)

    def _report_failure(self, exc: StoreError, count: int) -> None:
        level = logging.DEBUG if self._failing else logging.WARNING
        self._failing = True
        logger.log(
            level,
            "%s: recording %d finished offsets failed (%s); retrying until the store answers",
            self.name,
            count,
            exc,
        )

    # -- leaving ---------------------------------------------------------------------------

    async def flush(self) -> None:
        """Write what is due now (a revoke or stop is about to commit)."""
        try:
            async with asyncio.timeout(FLUSH_TIMEOUT):
                while self._pending:
                    if not await self._write():
                        await asyncio.sleep(STORE_RETRY)
        except TimeoutError:
            count = sum(map(len, self._pending.values()))
            self._pending.clear()
            logger.error(
                "%s: %d finished offsets were not recorded within %gs; those messages may run "
                "again after a restart",
                self.name,
                count,
                FLUSH_TIMEOUT,
            )

    async def release(self, partitions: Collection[TopicPartition]) -> None:
        """Give up the leases of `partitions` (after `flush`): their next owner starts at once."""
        held = [tp for tp in partitions if self._states.pop(tp, None) is not None]
        for tp in partitions:
            self._pending.pop(tp, None)
        self._wake.set()  # the write loop ends once nothing is held
        try:
            await self.ledger.release(self.group, held, self.owner)
        except StoreError as exc:
            logger.warning(
                "%s: releasing %d partitions failed (%s); their next owner waits out the lease",
                self.name,
                len(held),
                exc,
            )
