"""One assigned partition of a consumer: dispatch in the ordering mode, and track offsets.

Records are spread over *lanes*; a lane runs its records one after another in one task. The ordering
mode picks the lane of a record:

- ``partition``: one lane, so the partition runs in offset order;
- ``key``: one lane per key (a record without a key gets a lane of its own), up to `concurrency`
  lanes running at once, so each key runs in offset order and different keys overlap;
- ``none``: a lane per record, up to `concurrency` running at once.

Whatever the mode, the commit target is the lowest unfinished offset: an `OffsetTracker` keeps it
when records may finish out of order, a `SequentialTracker` (two numbers) in partition mode.

This is the per-message path, so it is written for speed: partition mode hands a fetched batch to
its lane in one step and settles its offsets once per batch, a lane awaits the handler directly
and only calls into the error policy when a handler raises, and progress is reported by setting
an event. Key and none modes queue a fetched batch into its lanes at once; a lane gets a deque
only once a second record of it waits, so a lane per buffered key costs a dict entry.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Coroutine, Hashable, Sequence
from typing import TYPE_CHECKING, Any

from taskflow import loopwatch
from taskflow.workers.offsets import OffsetTracker, SequentialTracker

if TYPE_CHECKING:
    from taskflow.crew import Crew
    from taskflow.message import Message, TopicPartition
    from taskflow.workers.budget import Account
    from taskflow.workers.processing import Processor

__all__ = ["PartitionRunner"]

logger = logging.getLogger("taskflow.consumer")

LaneOf = Callable[["Message"], Hashable]


def lane_function(ordering: str) -> LaneOf:
    """How records of a partition are grouped into lanes that run in order."""
    if ordering == "partition":
        return _one_lane
    if ordering == "key":
        return _key_lane
    return _own_lane


def _one_lane(message: Message) -> Hashable:
    return None


def _key_lane(message: Message) -> Hashable:
    return message.key if message.key is not None else ("offset", message.offset)


def _own_lane(message: Message) -> Hashable:
    return message.offset


class PartitionRunner:
    """Runs the records of one partition for one assignment epoch."""

    def __init__(
        self,
        tp: TopicPartition,
        epoch: int,
        processor: Processor,
        task_group: Crew,
        *,
        ordering: str,
        concurrency: int,
        progress: asyncio.Event,
        on_drained: Callable[[PartitionRunner], None],
    ) -> None:
        self.tp = tp
        self.sequential = ordering == "partition"
        self._running: dict[Hashable, Message] = {}
        self.tracker: OffsetTracker | SequentialTracker = (
            SequentialTracker(epoch, self._running) if self.sequential else OffsetTracker(epoch)
        )
        self.processor = processor
        self.task_group = task_group
        self.concurrency = concurrency
        self.progress = progress
        self.on_drained = on_drained
        self.lane_of = lane_function(ordering)
        self.committed: int | None = None
        self.paused = False  # set by the worker when it pauses fetching for backpressure
        self.resume_below = 0
        self.account: Account | None = None  # its share of the memory budget, set by the worker
        self.closed = False
        # Key and none modes: each lane's records after its first (a deque only once a lane has
        # a second record waiting: most lanes never do when keys cycle, and none never does).
        self._lanes: dict[Hashable, deque[Message] | None] = {}
        # Partition mode's one lane: each fetched run of records, with its bytes in the budget.
        self._runs: deque[tuple[Sequence[Message], int]] = deque()
        self._lane_running = False  # partition mode: the lane's task is alive
        # lanes no worker has taken yet, with their first record, in offset order
        self._ready: deque[tuple[Hashable, Message]] = deque()
        self._workers = 0  # worker tasks alive (key and none modes)
        self._spare = False  # a worker was started and has not taken a lane yet
        self._slot = 0  # the last worker's key in `_running`
        self.by_key = ordering == "key"
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    # -- feeding ---------------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Records fetched and not finished (queued in a lane, or running)."""
        return self.tracker.in_flight

    @property
    def running(self) -> list[Message]:
        """The records whose handlers are running now."""
        return list(self._running.values())

    def feed(self, records: Sequence[Message]) -> None:
        """Take fetched records, in offset order, and start what the concurrency allows."""
        if self.closed or not records:
            return
        account = self.account
        size = 0 if account is None else account.take(records)
        if self.sequential:
            self._feed_lane(records, size)
            return
        self._dispatch(records)
        if self._ready:
            self._add_worker()

    def _feed_lane(self, records: Sequence[Message], size: int) -> None:
        assert isinstance(self.tracker, SequentialTracker)
        self.tracker.dispatched_run(records[0].offset, len(records))
        self._runs.append((records, size))
        if not self._lane_running:
            self._lane_running = True
            self._idle.clear()
            self._spawn(self._run_lane(self.tracker), f"{self.tp}:lane")

    def _dispatch(self, records: Sequence[Message]) -> None:
        """Queue each fetched record in its lane at once, in offset order (key and none modes).

        A lane's first record makes it ready, for a worker to run; at most `concurrency` workers
        run, each one lane at a time, so each lane runs its records in order and at most that
        many handlers run at once. Starting a worker is the caller's.
        """
        lanes, ready, lane_of, by_key = self._lanes, self._ready, self.lane_of, self.by_key
        if not lanes:
            self._idle.clear()  # else it is clear already: it is set only once no lane is left
        for message in records:
            lane: Hashable = message.key if by_key else None
            if lane is None:
                lane = lane_of(message)
            if lane not in lanes:
                lanes[lane] = None
                ready.append((lane, message))
                continue
            queue = lanes[lane]
            if queue is None:
                lanes[lane] = deque((message,))
            else:
                queue.append(message)
        assert isinstance(self.tracker, OffsetTracker)
        self.tracker.dispatched_all(records)

    def _add_worker(self) -> None:
        """Start a worker for the ready lanes, unless one is on its way or `concurrency` run.

        Key and none modes: a worker that finishes a lane takes the next ready one, and a worker
        that takes a lane while more are ready starts the next worker. So workers grow as
        handlers wait (each one's first wait lets the next one start), while handlers that never
        wait are all run by one worker: a task per lane, or per ready lane at each fetch, would
        be a round of event-loop work per record when keys cycle.
        """
        if self._spare or self._workers >= self.concurrency:
            return
        self._spare = True
        self._workers += 1
        self._spawn(self._run_worker(), f"{self.tp}:worker")

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = self.task_group.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- running ---------------------------------------------------------------------------

    async def _run_lane(self, tracker: SequentialTracker) -> None:
        """Run the one lane of partition mode until no fetched run of records is left.

        The offsets are settled once per run, not per record (see `SequentialTracker`): per
        record the lane notes the record in `running`, awaits its handler and sets `progress`.
        """
        runs, running, processor = self._runs, self._running, self.processor
        first_try, progress = processor.first_try, self.progress
        direct = processor.handler if processor.direct else None
        shared_ctx = processor.shared_ctx
        account = self.account
        message: Message | None = None
        task = loopwatch.handling(processor.spec.name, running, None)
        try:
            while runs and not self.closed:
                run, size = runs.popleft()
                tracker.started(run)
                try:
                    for message in run:
                        if self.closed:
                            break  # `message` never started: it and the rest stay unfinished
                        running[None] = message
                        try:
                            if direct is not None:
                                await direct(message, shared_ctx)  # type: ignore[arg-type]
                            else:
                                await first_try(message)
                        except asyncio.CancelledError:
                            raise
                        except BaseException as exc:  # SystemExit and the like: processing.py
                            if not await processor.recover(message, exc, self._pause):
                                break  # closed while retrying: left unfinished, never committed
                        # The commit loop, once it runs, commits below the running record.
                        progress.set()
                    else:
                        message = None  # the whole run finished
                    running.pop(None, None)
                finally:  # on cancellation too: what finished below `message` is committed
                    tracker.settled(run, message)
                    if message is None and account is not None:
                        # A run cut short is released when the closing partition's account
                        # closes: only a closing partition leaves a run unfinished.
                        account.release(size)
                if self.paused and self.buffered <= self.resume_below:
                    self.on_drained(self)
        except asyncio.CancelledError:
            if running.pop(None, None) is not None:
                logger.warning(
                    "cancelled handler %s for %s: not committed, it will be redelivered",
                    processor.spec.name,
                    message,
                )
            raise
        finally:
            loopwatch.done(task)
            running.pop(None, None)
            self._lane_running = False
            if not self._lanes:
                self._idle.set()

    async def _run_worker(self) -> None:
        """Run ready lanes one after another until none is ready (key and none modes).

        Each lane's records run in order; the worker notes the record it runs in `running` under
        a key of its own, so the loop watch is told once per worker, not once per lane.
        """
        ready, lanes = self._ready, self._lanes
        running, tracker, processor = self._running, self.tracker, self.processor
        first_try, progress = processor.first_try, self.progress
        direct = processor.handler if processor.direct else None
        shared_ctx = processor.shared_ctx
        account = self.account
        slot = self._slot = self._slot + 1
        taken = False
        task = loopwatch.handling(processor.spec.name, running, slot)
        try:
            while ready and not self.closed:
                lane, message = ready.popleft()
                if not taken:
                    taken, self._spare = True, False
                if ready and not self._spare:
                    self._add_worker()
                try:
                    while True:
                        running[slot] = message
                        try:
                            if direct is not None:
                                await direct(message, shared_ctx)  # type: ignore[arg-type]
                            else:
                                await first_try(message)
                        except asyncio.CancelledError:
                            raise
                        except BaseException as exc:  # SystemExit and the like: processing.py
                            if not await processor.recover(message, exc, self._pause):
                                return  # closed while retrying: left unfinished, not committed
                        del running[slot]
                        tracker.finished(message.offset)
                        if account is not None:
                            account.finished(message)
                        progress.set()
                        if self.paused and self.buffered <= self.resume_below:
                            self.on_drained(self)
                        queue = lanes[lane]
                        if not queue or self.closed:
                            break
                        message = queue.popleft()
                except asyncio.CancelledError:
                    if running.pop(slot, None) is not None:
                        logger.warning(
                            "cancelled handler %s for %s: not committed, it will be redelivered",
                            processor.spec.name,
                            message,
                        )
                    raise
                finally:
                    running.pop(slot, None)
                    del lanes[lane]
        finally:
            loopwatch.done(task)
            if not taken:
                self._spare = False
            self._workers -= 1
            if not self._lanes:
                self._idle.set()

    async def _pause(self, seconds: float) -> bool:
        """Wait before a retry; False when the partition closes meanwhile (give the record up)."""
        if self.closed:
            return False
        try:
            async with asyncio.timeout(seconds):
                await self._closed.wait()
        except TimeoutError:
            return True
        return False

    # -- closing ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop dispatching: running handlers finish, the rest is dropped (redelivered later)."""
        self.closed = True
        self._closed.set()
        self._runs.clear()
        for queue in self._lanes.values():
            if queue is not None:
                queue.clear()
        for lane, _ in self._ready:  # lanes no worker has taken: nothing of theirs runs now
            self._lanes.pop(lane, None)
        self._ready.clear()
        if not self._lanes and not self._lane_running:
            self._idle.set()

    async def wait_idle(self, timeout: float | None) -> bool:
        """Wait for running handlers to finish; True if they did within `timeout`."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def cancel(self) -> None:
        """Cancel the handlers still running (after `close` and a failed `wait_idle`)."""
        for task in self._tasks:
            task.cancel()
