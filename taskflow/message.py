"""Messages: what a consumer handler receives, and the coordinates of a partition."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

__all__ = ["Headers", "Message", "TopicPartition"]

Headers = tuple[tuple[str, bytes], ...]
"""Kafka headers: an ordered sequence of (name, value) pairs; a name may repeat."""


class TopicPartition(NamedTuple):
    """One partition of one topic. Equal to aiokafka's `TopicPartition` with the same fields."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


class Message(NamedTuple):
    """One record as the broker delivered it. Immutable.

    A named tuple rather than a dataclass: one is built per record on the hot path, and a tuple
    is built several times faster. Compare messages by their coordinates, not with ``==``
    against plain tuples.

    Attributes:
        topic: The topic it was read from.
        partition: Its partition.
        offset: Its offset within the partition.
        key: The record key, or None.
        value: The raw payload; None for a tombstone (a Kafka record whose value is null),
            which is not the same as an empty value, ``b""``.
        headers: The record headers, in order.
        timestamp_ms: Milliseconds since the Unix epoch, as the broker stamped it.

    Example:
        ```python
        @app.consume("orders")
        async def on_order(message: Message) -> None:
            trace = message.header("trace")
            print(message.topic, message.partition, message.offset, trace)
        ```
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()
    timestamp_ms: int = 0

    @property
    def topic_partition(self) -> TopicPartition:
        """The message's (topic, partition)."""
        return TopicPartition(self.topic, self.partition)

    @property
    def timestamp(self) -> datetime:
        """The broker timestamp as an aware UTC datetime."""
        return datetime.fromtimestamp(self.timestamp_ms / 1000, tz=UTC)

    def header(self, name: str) -> bytes | None:
        """Return the last value of header `name`, or None when it is absent."""
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"
