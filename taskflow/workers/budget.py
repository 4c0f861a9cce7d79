"""The memory budget of a process: one bound, in bytes, on the fetched records it holds.

Every consumer worker of a process shares one `BufferBudget`, made with ``buffer_bytes`` (App
option, ``TASKFLOW_BUFFER_BYTES``, ``--buffer-bytes``). A record counts from the moment a fetch
hands it to taskflow until its handler finishes (or its partition is given up): value, key and
headers (`taskflow.brokers.records.message_bytes`). The budget covers two holders:

- **taskflow.** When the records it holds reach `pause_at` (half the budget), every consumer
  worker pauses every partition it consumes (it keeps polling, so it stays in its group); once
  they drop below `resume_below` (a quarter), every partition is resumed, except those paused by
  their own ``max_buffered`` bound.
- **the Kafka clients.** What a client has fetched but not handed out, or is fetching now, is
  bounded through the size of a fetch, `fetch_bytes`: a sixteenth of the budget divided among the
  consumers, given to aiokafka as ``fetch_max_bytes`` (and ``max_partition_fetch_bytes``, at most
  aiokafka's default of 1 MiB) unless the app set those options. A client holds about one fetch
  it has not handed out and has one on its way per broker it fetches from, and a fetch takes up
  to three times its size while it is read and decoded (the socket's buffer, the response, the
  records).

So the counted half, one fetch over it, and a few fetches in the client make about 13/16 of the
budget; the rest is slack for the allocator. Records are only counted once fetched, so the check
comes after a fetch, never against a record: a fetch taken while the budget is not spent is taken
whole, and a record larger than the whole budget is still handled (fetching pauses until it and
the rest are finished). Nothing waits on a spent budget but fetching: every record taskflow holds
is handled or dropped, each release brings the budget down, and all partitions resume together,
so none is starved while others run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Protocol

from taskflow.brokers.records import message_bytes

if TYPE_CHECKING:
    from taskflow.message import Message

__all__ = ["Account", "BudgetListener", "BufferBudget"]

logger = logging.getLogger("taskflow.consumer")

FETCH_SHARE: Final = 16  # a fetch is a sixteenth of the budget, split among the consumers
MIN_FETCH_BYTES: Final = 64 * 1024  # below this a fetch carries too little to keep up
MAX_FETCH_BYTES: Final = 2**31 - 1  # the largest Kafka's protocol carries


class BudgetListener(Protocol):
    """A consumer worker: told when the budget is spent and when it is available again."""

    def on_budget_spent(self) -> None:
        """Pause fetching every partition."""
        ...

    def on_budget_available(self) -> None:
        """Resume fetching the partitions paused for the budget."""
        ...


class BufferBudget:
    """The bytes of fetched, unfinished records of a process, and the bound on them.

    Args:
        limit: ``buffer_bytes``: every byte of fetched records the process may hold, in taskflow
            and in its Kafka clients.
        consumers: How many consumer workers share it (each has its own Kafka client).

    Attributes:
        used: The bytes of the records taskflow holds now.
        spent: True from when `used` reaches `pause_at` until it drops below `resume_below`.
    """

    def __init__(self, limit: int, *, consumers: int = 1) -> None:
        self.limit = limit
        self.consumers = max(consumers, 1)
        share = limit // (FETCH_SHARE * self.consumers)
        self.fetch_bytes = min(max(share, MIN_FETCH_BYTES), MAX_FETCH_BYTES)
        self.pause_at = limit // 2
        self.resume_below = limit // 4
        self.used = 0
        self.spent = False
        self._listeners: list[BudgetListener] = []

    def __repr__(self) -> str:
        return f"BufferBudget(used={self.used}, limit={self.limit}, spent={self.spent})"

    def subscribe(self, listener: BudgetListener) -> None:
        """Tell `listener` of every change from now on (a consumer worker, as it starts)."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: BudgetListener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def account(self) -> Account:
        """A new account for the records of one partition."""
        return Account(self)

    def take(self, size: int) -> None:
        """Count `size` more bytes; spend the budget when they reach `pause_at`."""
        self.used += size
        if not self.spent and self.used >= self.pause_at:
            self.spent = True
            logger.debug("memory budget spent: %d of %d bytes held; pausing", self.used, self.limit)
            for listener in tuple(self._listeners):
                listener.on_budget_spent()

    def release(self, size: int) -> None:
        """Count `size` bytes fewer; make the budget available below `resume_below`."""
        self.used -= size
        if self.spent and self.used < self.resume_below:
            self.spent = False
            logger.debug("memory budget available: %d bytes held; resuming", self.used)
            for listener in tuple(self._listeners):
                listener.on_budget_available()


class Account:
    """The share of a budget that the records of one partition hold, for one assignment.

    Closed when the partition leaves its worker: what it still holds is released at once, and a
    record that finishes later releases nothing more.
    """

    __slots__ = ("budget", "closed", "held")

    def __init__(self, budget: BufferBudget) -> None:
        self.budget = budget
        self.held = 0
        self.closed = False

    def take(self, records: Sequence[Message]) -> int:
        """Count fetched records handed to the partition; returns their bytes, for `release`."""
        if self.closed:
            return 0
        size = sum(map(message_bytes, records))
        self.held += size
        self.budget.take(size)
        return size

    def release(self, size: int) -> None:
        """Release `size` bytes of records finished together (a run `take` counted)."""
        if self.closed:
            return
        self.held -= size
        self.budget.release(size)

    def finished(self, message: Message) -> None:
        """Release a record whose handler finished: `message_bytes`, inlined (once per record)."""
        if self.closed:
            return
        _, _, _, key, value, headers, _ = message
        size = 0 if value is None else len(value)
        if key is not None:
            size += len(key)
        if headers:
            for name, header in headers:
                size += len(name) + (0 if header is None else len(header))
        self.held -= size
        self.budget.release(size)

    def finished_many(self, messages: Sequence[Message]) -> None:
        """Release records finished together (a batch's)."""
        if self.closed:
            return
        size = sum(map(message_bytes, messages))
        self.held -= size
        self.budget.release(size)

    def close(self) -> None:
        """Release everything still counted; from now on nothing is counted."""
        if self.closed:
            return
        self.closed = True
        held, self.held = self.held, 0
        self.budget.release(held)
