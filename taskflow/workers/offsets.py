"""The offset tracker: what may be committed while a partition's work finishes out of order."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

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
    keeps two numbers and a count instead of a queue: nothing per record but an assignment, which
    matters on a path that runs for every message.
    """

    __slots__ = ("_first", "_last", "_open", "epoch")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self._first: int | None = None  # the first offset dispatched, until one finishes
        self._last: int | None = None  # the last offset finished
        self._open = 0

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

    @property
    def commit_target(self) -> int | None:
        """One past the last finished offset; before any finishes, the first dispatched one."""
        return self._first if self._last is None else self._last + 1

    @property
    def in_flight(self) -> int:
        """Records dispatched and not finished."""
        return self._open
