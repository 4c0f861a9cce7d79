"""Batch consumers: records gathered into batches, one handler call per batch.

A consumer registered with ``batch=N`` hands its handler up to N records at once. Fetched records
wait in a `BatchPool`; a *lane* of the pool takes a batch when:

- N records are waiting (a full batch), or
- the consumer has handed out everything it has fetched of the pool's partitions up to their
  ends as of the last fetch (they are *caught up*): nothing more can join the batch right now,
  so what is there goes at once, or
- ``batch_wait`` seconds have passed since the oldest waiting record was fetched, while more of
  the partition was known to be on its way (a partial batch: what is there), or
- records handed back by a failed batch (`BatchError`) wait at the front: they go at once.

In ``partition`` ordering each partition has a pool of its own with one lane, so a batch holds one
partition's records and batches of a partition run one after another, in offset order. In ``none``
ordering the consumer's partitions share one pool with `concurrency` lanes: a batch mixes the
records of several partitions, and up to `concurrency` batches run at once.

Before a batch is formed, each record is decoded to the handler's element type in one loop; a
record that does not decode is rejected alone (the single-record policy: dead letter, or logged
and skipped) and the batch goes on without it.

A batch runs under the error policy in `taskflow.workers.batch_work`; what it leaves unfinished
after a `BatchError` is handed back to the pool, to run again at once (with more records, when
there are).

Offsets: a record counts as finished in its partition's `OffsetTracker` once handled, skipped or
dead-lettered; unfinished ones hold the commit position. On revoke and stop a running batch
finishes within the budget, as single handlers do, and what waits in the pool is dropped.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from taskflow.batch import Batch
from taskflow.codec import identity
from taskflow.message import TopicPartition
from taskflow.workers.batch_work import BatchWork, Decode
from taskflow.workers.offsets import OffsetTracker
from taskflow.workers.partition import PartitionRunner

if TYPE_CHECKING:
    from collections.abc import Mapping

    from taskflow.brokers.base import Consumer, FetchPosition
    from taskflow.crew import Crew
    from taskflow.handler import Handler
    from taskflow.message import Message
    from taskflow.workers.processing import Pause, Processor

__all__ = ["BatchPool", "BatchRunner", "Batches"]

logger = logging.getLogger("taskflow.consumer")


Positions = Callable[[], "Mapping[TopicPartition, FetchPosition]"]


class BatchPool:
    """Buffered records of one partition (``partition`` ordering) or of every partition of a
    consumer (``none``), formed into batches run by up to `lanes` tasks at once."""

    def __init__(
        self,
        work: BatchWork,
        crew: Crew,
        *,
        size: int,
        wait: float,
        lanes: int,
        decode: Decode,
        shared: bool,
        positions: Positions,
    ) -> None:
        self.work = work
        self.positions = positions
        self.shared = shared  # records of several partitions (else of one)
        self.crew = crew
        self.size = size
        self.wait = wait
        self.max_lanes = lanes
        self.decode = decode
        self.owners: dict[TopicPartition, BatchRunner] = {}
        self.running: dict[asyncio.Task[Any], Batch] = {}
        self._queue: deque[Message] = deque()  # fetched, not decoded yet
        self._arrivals: deque[list[float]] = deque()  # [loop time fetched, records left of it]
        self._again: deque[tuple[Message, Any]] = deque()  # handed back by a batch, decoded
        self._lanes = 0
        self._filling = 0  # lanes waiting for a batch to fill
        self._more = asyncio.Event()  # a batch is full, or records were dropped
        self._closing = asyncio.Event()  # replaced each time a partition closes

    @property
    def waiting(self) -> int:
        return len(self._queue) + len(self._again)

    # -- taking records in -----------------------------------------------------------------

    def put(self, records: Sequence[Message]) -> None:
        """Take fetched records (of one partition, in offset order)."""
        self._queue.extend(records)
        self._arrivals.append([asyncio.get_running_loop().time(), len(records)])
        self._more.set()  # a filling lane looks again: full, or caught up
        self._start_lane()

    def _caught_up(self) -> bool:
        """Whether every open partition of the pool has handed out all it has fetched, up to
        its end as of the last fetch: then no more records can join a batch right now."""
        positions = self.positions()
        for tp, owner in self.owners.items():
            if owner.closed:
                continue
            where = positions.get(tp)
            if where is None or where.position is None or where.high_watermark is None:
                return False
            if where.position < where.high_watermark:
                return False
        return True

    def hand_back(self, records: Sequence[tuple[Message, Any]]) -> None:
        """Put decoded records back at the front, to go in the next batch at once."""
        self._again.extendleft(reversed(records))
        self._more.set()
        self._start_lane()

    def drop(self, tp: TopicPartition) -> None:
        """Forget what waits of `tp` (it closed): it is fetched again by its next owner."""
        if any(m.topic == tp.topic and m.partition == tp.partition for m in self._queue):
            oldest = self._arrivals[0][0]
            kept = [m for m in self._queue if (m.topic, m.partition) != tp]
            self._queue = deque(kept)
            self._arrivals = deque([[oldest, len(kept)]] if kept else [])
        self._again = deque(r for r in self._again if (r[0].topic, r[0].partition) != tp)
        self._more.set()
        self._closing.set()
        self._closing = asyncio.Event()

    def _start_lane(self) -> None:
        if self._filling == 0 and self._lanes < self.max_lanes:
            self._lanes += 1
            self.crew.create_task(self._lane(), name=f"{self.work.spec.name}:batch")

    # -- forming batches -------------------------------------------------------------------

    async def _lane(self) -> None:
        try:
            while self.waiting:
                if self.waiting < self.size and not self._again:
                    await self._fill()
                taken = self._take()
                if taken.messages:
                    await self._run(taken)
        finally:
            self._lanes -= 1

    async def _fill(self) -> None:
        """Wait until a batch is full, the partitions are caught up, or `wait` seconds after the
        oldest record came."""
        loop = asyncio.get_running_loop()
        self._filling += 1
        try:
            while self._queue and self.waiting < self.size and not self._again:
                deadline = self._arrivals[0][0] + self.wait
                if loop.time() >= deadline or self._caught_up():
                    return
                self._more.clear()
                try:
                    async with asyncio.timeout_at(deadline):
                        await self._more.wait()
                except TimeoutError:
                    return
        finally:
            self._filling -= 1

    def _take(self) -> _Taken:
        """Up to `size` records: those handed back first, then fetched ones, decoded."""
        again, queue = self._again, self._queue
        if not again:  # the usual case: fetched records only
            count = min(self.size, len(queue))
            if count == len(queue):
                messages = list(queue)
                queue.clear()
            else:
                messages = [queue.popleft() for _ in range(count)]
            self._consume_arrivals(count)
            return self._decoded(messages)
        taken = _Taken([], [], {})
        while again and len(taken.messages) < self.size:
            message, payload = again.popleft()
            taken.messages.append(message)
            taken.payloads.append(payload)
        count = min(self.size - len(taken.messages), len(queue))
        if count:
            fresh = self._decoded([queue.popleft() for _ in range(count)])
            self._consume_arrivals(count)
            offset = len(taken.messages)
            taken.messages.extend(fresh.messages)
            taken.payloads.extend(fresh.payloads)
            taken.failed.update((offset + i, exc) for i, exc in fresh.failed.items())
        return taken

    def _consume_arrivals(self, count: int) -> None:
        arrivals = self._arrivals
        while count:
            first = arrivals[0]
            if first[1] > count:
                first[1] -= count
                return
            count -= int(first[1])
            arrivals.popleft()

    def _decoded(self, messages: list[Message]) -> _Taken:
        """`messages` and their payloads, decoded in one loop; the records that fail to decode
        are noted by position, for `_run` to reject."""
        decode = self.decode
        if decode is identity:
            return _Taken(messages, messages, {})
        try:
            return _Taken(messages, [decode(m) for m in messages], {})
        except Exception:
            pass
        payloads: list[Any] = []
        failed: dict[int, Exception] = {}
        for index, message in enumerate(messages):
            try:
                payloads.append(decode(message))
            except Exception as exc:
                payloads.append(None)
                failed[index] = exc
        return _Taken(messages, payloads, failed)

    # -- running ---------------------------------------------------------------------------

    async def _run(self, taken: _Taken) -> None:
        owners = self._owners_of(taken.messages)
        task = asyncio.current_task()
        assert task is not None
        for owner in owners:
            owner.active += 1
            owner._idle.clear()
        batch = Batch(tuple(taken.messages), tuple(taken.payloads))
        self.running[task] = batch
        finished: list[Message] = []
        unfinished: list[tuple[Message, Any]] = []
        settled = 0

        def settle(count: int) -> None:
            nonlocal settled
            self._settle(owners, list(batch.messages[settled:count]))
            settled = max(settled, count)

        try:
            if taken.failed:
                batch = await self._reject_undecoded(batch, taken.failed, finished)
            if batch.messages:
                pause = self._pause_batch(owners)
                done = await self.work.run(batch, pause, self._pause_record, settle)
                finished.extend(batch.messages[settled:done])
                if done < len(batch):
                    left = zip(batch.messages[done:], batch.payloads[done:], strict=True)
                    unfinished.extend(left)
        except asyncio.CancelledError:
            logger.warning(
                "cancelled handler %s for %s: not committed, it will be redelivered",
                self.work.spec.name,
                self.running.get(task),
            )
            # A partition that did not ask for it (a mixed batch cancelled for another
            # partition's revoke) runs its records again rather than stall its commits.
            self._hand_back(
                list(zip(batch.messages[settled:], batch.payloads[settled:], strict=True))
            )
            raise
        finally:
            del self.running[task]
            if taken.failed:  # rejects came first: put them in offset order
                finished.sort(key=_offset)
            self._settle(owners, finished)
            for owner in owners:
                owner.active -= 1
                if owner.active == 0:
                    owner._idle.set()
        self._hand_back(unfinished)

    async def _reject_undecoded(
        self, batch: Batch, failed: dict[int, Exception], finished: list[Message]
    ) -> Batch:
        """Reject the records that failed to decode, each alone (those finished are added to
        `finished`); return the batch of the others."""
        processor = self.work.processor
        for index, error in failed.items():
            message = batch.messages[index]
            if await processor.recover(message, error, self._pause_record(message)):
                finished.append(message)
        return batch.select(i for i in range(len(batch)) if i not in failed)

    def _owners_of(self, messages: Sequence[Message]) -> list[BatchRunner]:
        owners = self.owners
        if not self.shared:
            return list(owners.values())
        tps = dict.fromkeys(TopicPartition(m.topic, m.partition) for m in messages)
        return [owners[tp] for tp in tps if tp in owners]

    def _settle(self, owners: list[BatchRunner], finished: list[Message]) -> None:
        """Mark `finished` records done in their partitions' trackers; tell of the progress."""
        if not finished:
            return
        if not self.shared:
            owner = owners[0]
            tracker = owner.tracker
            if not tracker.finished_run(finished[0].offset, finished[-1].offset, len(finished)):
                tracker.finished_many(m.offset for m in finished)
            if owner.account is not None:
                owner.account.finished_many(finished)
        else:
            by_tp = {(o.tp.topic, o.tp.partition): o for o in owners}
            for message in finished:
                found = by_tp.get((message.topic, message.partition))
                if found is not None:
                    found.tracker.finished(message.offset)
                    if found.account is not None:
                        found.account.finished(message)
        for owner in owners:
            owner.progress.set()
            if owner.paused and owner.buffered <= owner.resume_below:
                owner.on_drained(owner)

    def _hand_back(self, unfinished: list[tuple[Message, Any]]) -> None:
        """Records left unfinished run again, unless their partition closed meanwhile."""
        owners = self.owners
        again = [
            (m, p)
            for m, p in unfinished
            if (owner := owners.get(TopicPartition(m.topic, m.partition))) is not None
            and not owner.closed
        ]
        if again:
            self.hand_back(again)

    def _pause_batch(self, owners: list[BatchRunner]) -> Pause:
        async def pause(seconds: float) -> bool:
            return await self._pause(owners, seconds)

        return pause

    def _pause_record(self, message: Message) -> Pause:
        owner = self.owners.get(TopicPartition(message.topic, message.partition))
        owners = [owner] if owner is not None else []

        async def pause(seconds: float) -> bool:
            return owner is not None and await self._pause(owners, seconds)

        return pause

    async def _pause(self, owners: list[BatchRunner], seconds: float) -> bool:
        """Wait `seconds`; False as soon as one of `owners` closes (the work is given up)."""
        deadline = asyncio.get_running_loop().time() + seconds
        while True:
            if any(owner.closed for owner in owners):
                return False
            closing = self._closing
            try:
                async with asyncio.timeout_at(deadline):
                    await closing.wait()
            except TimeoutError:
                return True

    def cancel(self, owner: BatchRunner) -> None:
        """Cancel the running batches that hold records of `owner`."""
        tp = owner.tp
        for task, batch in list(self.running.items()):
            if any(m.topic == tp.topic and m.partition == tp.partition for m in batch):
                task.cancel()

    def messages_of(self, tp: TopicPartition) -> list[Message]:
        """The records of `tp` in running batches."""
        return [
            m
            for batch in list(self.running.values())
            for m in batch
            if m.topic == tp.topic and m.partition == tp.partition
        ]


def _offset(message: Message) -> int:
    return message.offset


class _Taken(NamedTuple):
    """Records taken for a batch, their payloads, and the errors of those that did not decode."""

    messages: list[Message]
    payloads: list[Any]
    failed: dict[int, Exception]


class BatchRunner(PartitionRunner):
    """One assigned partition of a batch consumer: feeds its `BatchPool` and tracks its offsets.

    It is a `PartitionRunner` to the consumer worker (the same feeding, closing, waiting and
    offsets), with its records run by the pool rather than by lanes of its own.
    """

    def __init__(
        self,
        tp: TopicPartition,
        epoch: int,
        pool: BatchPool,
        *,
        progress: asyncio.Event,
        on_drained: Callable[[PartitionRunner], None],
    ) -> None:
        super().__init__(
            tp,
            epoch,
            pool.work.processor,
            pool.crew,
            ordering="none",
            concurrency=1,
            progress=progress,
            on_drained=on_drained,
        )
        self.tracker: OffsetTracker = OffsetTracker(epoch)
        self.pool = pool
        self.active = 0  # running batches holding records of this partition
        pool.owners[tp] = self

    @property
    def buffered(self) -> int:
        return self.tracker.in_flight

    @property
    def running(self) -> list[Message]:
        return self.pool.messages_of(self.tp)

    def feed(self, records: Sequence[Message]) -> None:
        if self.closed or not records:
            return
        if self.account is not None:
            self.account.take(records)
        self.tracker.dispatched_many([m.offset for m in records])
        self.pool.put(records)

    def close(self) -> None:
        self.closed = True
        self._closed.set()
        self.pool.drop(self.tp)
        if self.active == 0:
            self._idle.set()

    def cancel(self) -> None:
        self.pool.cancel(self)


class Batches:
    """A batch consumer's pools: one per partition (``partition``) or one shared (``none``).

    Args:
        processor: The consumer's processor, whose handler is `one_record` of the stack.
        stack: The handler stack, called with a `Batch`.
    """

    def __init__(self, processor: Processor, stack: Handler) -> None:
        spec = processor.spec
        assert spec.batch is not None
        assert spec.batch_decode is not None
        self.spec = spec
        self.work = BatchWork(processor, stack)
        self.size = spec.batch
        self.decode = spec.batch_decode
        self.shared = spec.ordering == "none"
        self._pool: BatchPool | None = None

    def runner(
        self,
        tp: TopicPartition,
        epoch: int,
        crew: Crew,
        consumer: Consumer,
        *,
        progress: asyncio.Event,
        on_drained: Callable[[PartitionRunner], None],
    ) -> BatchRunner:
        """The runner of a newly assigned partition."""
        if self.shared:
            pool = self._pool
            if pool is None or pool.crew is not crew:  # a new start of the worker
                pool = self._pool = self._new_pool(crew, consumer, self.spec.concurrency)
            else:
                _forget_closed(pool)
        else:
            pool = self._new_pool(crew, consumer, 1)
        runner = BatchRunner(tp, epoch, pool, progress=progress, on_drained=on_drained)
        runner.resume_below = self.spec.max_buffered // 2
        return runner

    def _new_pool(self, crew: Crew, consumer: Consumer, lanes: int) -> BatchPool:
        return BatchPool(
            self.work,
            crew,
            size=self.size,
            wait=self.spec.batch_wait,
            lanes=lanes,
            decode=self.decode,
            shared=self.shared,
            positions=consumer.positions,
        )


def _forget_closed(pool: BatchPool) -> None:
    """Drop the runners of partitions that closed and have nothing running any more."""
    for tp, owner in list(pool.owners.items()):
        if owner.closed and owner.active == 0:
            del pool.owners[tp]
