"""The offset tracker: what may be committed while a partition's work finishes out of order."""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from taskflow.message import Message

__all__ = ["OffsetTracker", "SequentialTracker"]


class OffsetTracker:
    """Tracks the records of one partition from dispatch to finish.

    The commit target is the lowest offset not yet finished, or one past the last finished record
    when everything dispatched is done: committing it never skips an unfinished record, even when
    handlers finish out of order (key and none ordering).

    One tracker belongs to one assignment of its partition (its `epoch`); a tracker of a revoked
    assignment is dropped, so late work from it can never move a commit.
    """

    __slots__ = ("_finished", "_last", "_pending", "epoch")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self._pending: deque[int] = deque()
        self._finished: set[int] = set()
        self._last: int | None = None  # the highest offset known done with nothing open below it

    def dispatched(self, offset: int) -> None:
        """Record that `offset` (greater than every earlier one) is being worked on."""
        self._pending.append(offset)

    def dispatched_many(self, offsets: Iterable[int]) -> None:
        """Record `offsets` (increasing, greater than every earlier one) in one step."""
        self._pending.extend(offsets)

    def dispatched_all(self, records: Iterable[Message]) -> None:
        """Record that each of `records` (in offset order, after every earlier one) is being
        worked on, in one step."""
        self._pending.extend(map(_offset, records))

    def finished(self, offset: int) -> None:
        """Record that `offset` is done: handled, skipped or dead-lettered."""
        pending = self._pending
        if not pending or offset < pending[0]:
            return  # finished twice, or never dispatched: keeping it would only leak
        if offset != pending[0]:
            self._finished.add(offset)
            return
        pending.popleft()
        last = offset
        finished = self._finished
        while finished and pending and pending[0] in finished:
            last = pending.popleft()
            finished.discard(last)
        self._last = last

    def finished_run(self, first: int, last: int, count: int) -> bool:
        """Record that the `count` oldest unfinished records, from `first` to `last`, are done,
        in one step; False (nothing recorded) when they are not those."""
        pending = self._pending
        if self._finished or len(pending) < count or pending[0] != first:
            return False
        if pending[count - 1] != last:
            return False
        if count == len(pending):
            pending.clear()
        else:
            for _ in range(count):
                pending.popleft()
        self._last = last
        return True

    def finished_many(self, offsets: Iterable[int]) -> None:
        """Record that each of `offsets` is done (a batch, settled at once)."""
        for offset in offsets:
            self.finished(offset)

    @property
    def commit_target(self) -> int | None:
        """The offset to commit (the next one to read after a restart), or None if none is known."""
        if self._pending:
            return self._pending[0]
        return None if self._last is None else self._last + 1

    @property
    def in_flight(self) -> int:
        """Records dispatched and not yet covered by the commit target.

        That is the unfinished records plus those finished after the lowest unfinished one: what a
        restart would deliver again. Bounding it bounds that redelivery.
        """
        return len(self._pending)


class SequentialTracker:
    """The tracker for records finished in the order they were dispatched (partition ordering).

    Then the lowest unfinished offset is always just after the last finished one, so the tracker
    keeps two numbers and a count instead of a queue. The lane settles it once per run of
    records (`started`, then `settled`), not per record: while a run is worked on, the record
    the lane is running (`running[lane]`, which the lane sets anyway for the loop watch) is the
    lowest unfinished one, and the commit target and the in-flight count are read from it when
    they are asked for. Per record, that costs the lane nothing but that one assignment.

    Args:
        epoch: The assignment this tracker belongs to.
        running: The record each lane of the partition runs now, absent between records.
        lane: The key of the one lane in `running`.
    """

    __slots__ = ("_first", "_lane", "_last", "_open", "_run", "_running", "epoch")

    def __init__(
        self,
        epoch: int,
        running: Mapping[Hashable, Message] | None = None,
        lane: Hashable = None,
    ) -> None:
        self.epoch = epoch
        self._first: int | None = None  # the first offset dispatched, until one finishes
        self._last: int | None = None  # the last offset finished
        self._open = 0
        self._running: Mapping[Hashable, Message] = {} if running is None else running
        self._lane = lane
        self._run: Sequence[Message] = ()  # the run the lane works on, in offset order

    def dispatched(self, offset: int) -> None:
        """Record that `offset` is being worked on; offsets come in increasing order."""
        self.dispatched_run(offset, 1)

    def dispatched_run(self, first: int, count: int) -> None:
        """Record `count` records, the first at offset `first`, in one step."""
        if self._first is None:
            self._first = first
        self._open += count

    def finished(self, offset: int) -> None:
        """Record that `offset`, the oldest unfinished record, is done."""
        self._last = offset
        self._open -= 1

    def started(self, run: Sequence[Message]) -> None:
        """The lane starts on `run`, dispatched records in offset order, one by one."""
        self._run = run

    def settled(self, run: Sequence[Message], unfinished: Message | None) -> None:
        """The lane is done with `run`: every record of it finished, or, when the lane stopped
        in it, those below `unfinished` (the rest is never committed by this tracker)."""
        done = len(run) if unfinished is None else bisect_left(run, unfinished.offset, key=_offset)
        if done:
            self._last = run[done - 1].offset
            self._open -= done
        self._run = ()

    @property
    def commit_target(self) -> int | None:
        """The running record's offset; between records, one past the last finished offset;
        before any finishes, the first dispatched one."""
        current = self._running.get(self._lane)
        if current is not None:
            return current.offset
        return self._first if self._last is None else self._last + 1

    @property
    def in_flight(self) -> int:
        """Records dispatched and not finished."""
        current = self._running.get(self._lane)
        if current is None:
            return self._open
        return self._open - bisect_left(self._run, current.offset, key=_offset)


def _offset(message: Message) -> int:
    return message.offset
