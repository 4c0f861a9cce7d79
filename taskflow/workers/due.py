"""The gate of a retry-topic partition: its records run only once they are due.

A retry stage's records arrive roughly in the order they fall due (one stage, one delay), so only
the head is gated: fetched records that are due go to the partition's runner at once; from the
first one that is not, the rest are held here, and the consumer worker pauses the partition and
wakes when the head is due (on the app's clock). No handler sleeps, and a held record was never
handed to the runner, so the partition's commit stays below it: after a restart or a rebalance it
is fetched again, and its due time, read from its headers, still holds.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from taskflow.retry_topics import due_ms, failed_in

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Sequence

    from taskflow.message import Message

__all__ = ["CLOCK_SKEW", "DueGate", "epoch_ms"]

CLOCK_SKEW = 60.0
"""Seconds two replicas' clocks may differ before a due time is called further ahead than its
stage's delay could make it."""


def epoch_ms(moment: datetime) -> int:
    """`moment` in milliseconds since the Unix epoch."""
    return round(moment.timestamp() * 1000)


class DueGate:
    """Holds a retry-topic partition's records that are not due yet, in offset order.

    Args:
        delay: The stage's delay in seconds (for a record without a ``taskflow-due`` header).
        group: The registration's group: a record another group failed is not its to wait for.
    """

    def __init__(self, delay: float, group: str) -> None:
        self.delay = delay
        self.group = group
        self.held: deque[Message] = deque()
        self.waiter: asyncio.Task[None] | None = None  # the worker's wait for the head
        self._told: int | None = None  # the offset of the last head called too far ahead

    def due(self, message: Message) -> int:
        """When `message` may run (epoch ms); a record of another group at once (it is
        skipped)."""
        return due_ms(message, self.delay) if failed_in(message) == self.group else 0

    def admit(self, records: Sequence[Message], now_ms: int) -> Sequence[Message]:
        """The records of a fetch that may run now: those before the first that is not due.
        The rest are held (all of them while something is held already)."""
        if self.held:
            self.held.extend(records)
            return ()
        for index, message in enumerate(records):
            if self.due(message) > now_ms:
                self.held.extend(records[index:])
                return records[:index]
        return records

    def release(self, now_ms: int) -> list[Message]:
        """Take the held records that may run now, from the head."""
        ready = []
        while self.held and self.due(self.held[0]) <= now_ms:
            ready.append(self.held.popleft())
        return ready

    def too_far_ahead(self, now_ms: int) -> Message | None:
        """The head, the first time it is seen due further ahead than the stage's delay (plus
        `CLOCK_SKEW`) could make it: written by a clock ahead of ours, or with a changed
        header. It is held all the same, and what follows it with it."""
        if not self.held:
            return None
        head = self.held[0]
        limit = now_ms + round((self.delay + CLOCK_SKEW) * 1000)
        if self.due(head) <= limit or head.offset == self._told:
            return None
        self._told = head.offset
        return head

    @property
    def head_due(self) -> datetime | None:
        """When the first held record is due; None when nothing is held."""
        if not self.held:
            return None
        return datetime.fromtimestamp(self.due(self.held[0]) / 1000, UTC)
