"""The broker seam: what the App and the consumer worker need from a message broker.

Two brokers implement it: `memory://` (embedded, one process) and `kafka://` (aiokafka). The shape
follows Kafka's consumer-group model, so an app behaves the same on both: topics with partitions,
groups with committed offsets, explicit commits, rebalances announced to a listener, pause/resume.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from taskflow.brokers.records import DEFAULT_MAX_REQUEST_SIZE, record_size
from taskflow.message import Headers, Message, TopicPartition

__all__ = [
    "DEFAULT_MAX_REQUEST_SIZE",
    "DEFAULT_START",
    "Broker",
    "Consumer",
    "ConsumerOptions",
    "Delivery",
    "FetchPosition",
    "PartitionOffsets",
    "RebalanceListener",
    "record_size",
]


Delivery = asyncio.Future[tuple[TopicPartition, int]]
"""A record queued by `Broker.enqueue`: its partition and offset once the broker acknowledges it,
or the `PublishError` that says why it was not delivered."""


class RebalanceListener(Protocol):
    """Told when partitions leave or join a consumer. Each call completes before the change."""

    async def on_partitions_revoked(self, revoked: frozenset[TopicPartition]) -> None:
        """Partitions are about to be taken away: finish or abandon their work and commit."""
        ...

    async def on_partitions_assigned(self, assigned: frozenset[TopicPartition]) -> None:
        """Partitions now belong to this consumer; fetching starts at their committed offsets."""
        ...


DEFAULT_START = "earliest"
"""Where a group begins a partition it has no committed offset for, unless told otherwise."""


@dataclass(frozen=True, slots=True)
class ConsumerOptions:
    """One consumer registration's settings, as the worker hands them to the broker.

    Attributes:
        max_records: The most records one fetch returns.
        auto_offset_reset: Where the group begins a partition it has no committed offset for
            (``earliest`` or ``latest``), as the registration's ``start=`` says; None leaves it
            to the broker's own options, else `DEFAULT_START`.
        extra: The registration's ``consumer_options``: broker-specific options that win over
            the broker's own for this consumer. Kafka takes any aiokafka consumer option
            taskflow does not set itself; the memory broker ignores them.
        group_instance_id: This member's static identity in its group (Kafka's
            ``group.instance.id``), or None for a dynamic member. The memory broker ignores it.
    """

    max_records: int = 500
    auto_offset_reset: str | None = None
    extra: Mapping[str, object] = field(default_factory=dict)
    group_instance_id: str | None = None
    fetch_bytes: int | None = None
    """The most bytes of records one fetch should bring, from the memory budget; None: the
    broker's default. On Kafka it becomes ``fetch_max_bytes`` (and ``max_partition_fetch_bytes``
    at most 1 MiB) unless the app set those options."""


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """Committed offset and high watermark of one assigned partition, as the broker says."""

    committed: int | None
    high_watermark: int | None

    @property
    def lag(self) -> int | None:
        """Records not yet committed, when both offsets are known."""
        if self.committed is None or self.high_watermark is None:
            return None
        return max(self.high_watermark - self.committed, 0)


@dataclass(frozen=True, slots=True)
class FetchPosition:
    """Where a consumer is in one assigned partition, as it knows without asking the broker."""

    position: int | None
    """The offset of the next record it will hand out; None until known."""
    high_watermark: int | None
    """The offset the next record written to the partition will get, as of the last fetch."""


class Consumer(Protocol):
    """One member of a consumer group, subscribed to some topics."""

    async def start(self) -> None:
        """Join the group. Raises `BrokerError` when the broker cannot be reached."""
        ...

    async def stop(self) -> None:
        """Leave the group. Does not commit: the worker commits before it stops."""
        ...

    async def getmany(self, timeout: float) -> Mapping[TopicPartition, Sequence[Message]]:
        """Return fetched records by partition, waiting at most `timeout` seconds for some."""
        ...

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit, per partition, the offset of the next record to read.

        Raises `CommitError` when the group has moved on (a rebalance) or the broker refuses.
        """
        ...

    def assignment(self) -> frozenset[TopicPartition]:
        """The partitions currently assigned to this member."""
        ...

    def pause(self, partitions: Collection[TopicPartition]) -> None:
        """Stop fetching these partitions until `resume`; the member stays in the group."""
        ...

    def resume(self, partitions: Collection[TopicPartition]) -> None:
        """Fetch these partitions again."""
        ...

    async def offsets(self) -> dict[TopicPartition, PartitionOffsets]:
        """Committed offset and high watermark of each assigned partition."""
        ...

    def positions(self) -> dict[TopicPartition, FetchPosition]:
        """Fetch position and last known high watermark of each assigned partition.

        Local knowledge only, never a request: cheap enough for every metrics collection, which
        may call it from another thread.
        """
        ...


class Broker(Protocol):
    """A message broker: publishes records and makes group consumers."""

    @property
    def url(self) -> str:
        """The broker URL, with any secret masked."""
        ...

    @property
    def max_request_size(self) -> int:
        """The largest record `publish` takes, in bytes as `record_size` counts them.

        A larger one raises `RecordTooLarge`. On Kafka: the producer's `max_request_size`.
        """
        ...

    async def start(self) -> None:
        """Connect (the producer). Raises `BrokerError` when the broker cannot be reached."""
        ...

    async def close(self) -> None:
        """Flush what is being published and disconnect."""
        ...

    async def publish(
        self, topic: str, value: bytes | None, *, key: bytes | None = None, headers: Headers = ()
    ) -> tuple[TopicPartition, int]:
        """Publish one record and wait for the broker to acknowledge it.

        Returns its partition and offset. Raises `PublishError` on failure: `RecordRefused` when
        publishing it again cannot help (`RecordTooLarge` when it is too large).
        """
        ...

    async def enqueue(
        self, topic: str, value: bytes | None, *, key: bytes | None = None, headers: Headers = ()
    ) -> Delivery:
        """Hand one record to the producer and return once it is queued, not delivered.

        The returned future ends with the record's partition and offset, or with a
        `PublishError`; the caller owns it (and so must retrieve its outcome). `close` waits
        for every queued record. Raises `PublishError` for a record that cannot be queued.
        """
        ...

    def consumer(
        self,
        topics: Sequence[str],
        *,
        group: str,
        listener: RebalanceListener,
        options: ConsumerOptions,
    ) -> Consumer:
        """Make (not start) a consumer in `group` for `topics`."""
        ...
