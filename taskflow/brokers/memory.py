"""The embedded memory broker, `memory://`: Kafka's model inside one process.

Topics have partitions; a key picks its partition with Kafka's own hash (murmur2), so a key lands on
the same partition number as it would on Kafka; groups keep committed offsets; each partition is
delivered in order to exactly one member of a group; members joining or leaving rebalance the group
eagerly, calling each remaining member's listener before its partitions move. Delivery is
at-least-once: what a member fetched but did not commit is fetched again by the next owner.

What an app can observe through the `Broker` protocol is what Kafka shows it: publishing needs a
started broker, a record larger than Kafka's producer would send (`max_request_size`, 1048576 bytes
by default) is refused, a consumer answers only while started, a failing rebalance listener is
logged and the rebalance goes on.

It is the default broker for development and the engine of `taskflow.testing.TestClient`. Messages
live in memory for the life of the process.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Collection, Mapping, Sequence
from urllib.parse import parse_qs, urlsplit

from taskflow.brokers.base import (
    DEFAULT_MAX_REQUEST_SIZE,
    DEFAULT_START,
    ConsumerOptions,
    Delivery,
    FetchPosition,
    PartitionOffsets,
    RebalanceListener,
    record_size,
)
from taskflow.brokers.partitioner import partition_for_key
from taskflow.brokers.records import message_bytes
from taskflow.config import quoted, whole_number_text
from taskflow.exceptions import (
    BrokerError,
    CommitError,
    ConfigurationError,
    PublishError,
    RecordTooLarge,
    StateError,
)
from taskflow.message import Headers, Message, TopicPartition

__all__ = ["MemoryBroker", "MemoryConsumer", "MemoryGroup", "MemoryTopic"]

logger = logging.getLogger(__name__)

DEFAULT_PARTITIONS = 4
MAX_PARTITIONS = 1024  # one process holds every partition of every topic in memory
MAX_REQUEST_SIZE = 2**31 - 1  # the largest size Kafka's protocol carries


class MemoryTopic:
    """One topic of a memory broker: `logs[p]` is partition p's records, in offset order.

    `written` holds the same records over every partition, in the order they were published.
    """

    __slots__ = ("logs", "name", "round_robin", "subscribers", "written")

    def __init__(self, name: str, partitions: int) -> None:
        self.name = name
        self.logs: list[list[Message]] = [[] for _ in range(partitions)]
        self.written: list[Message] = []
        self.subscribers: set[MemoryConsumer] = set()
        self.round_robin = itertools.cycle(range(partitions))

    def partition_for(self, key: bytes | None) -> int:
        if key is None:
            return next(self.round_robin)
        return partition_for_key(key, len(self.logs))

    def append(self, record: Message) -> None:
        """Add a record to its partition and wake the members subscribed to the topic."""
        self.logs[record.partition].append(record)
        self.written.append(record)
        for subscriber in self.subscribers:
            subscriber.wakeup.set()


class MemoryGroup:
    """A consumer group: its members, their assignment and the offsets it committed.

    `committed` and `wait_for_commit` let a test follow the group's progress.
    """

    def __init__(self, broker: MemoryBroker, name: str) -> None:
        self.broker = broker
        self.name = name
        self.members: list[MemoryConsumer] = []
        self.committed: dict[TopicPartition, int] = {}
        self.generation = 0
        self._lock = asyncio.Lock()
        self._commits = asyncio.Condition()

    async def join(self, member: MemoryConsumer) -> None:
        async with self._lock:
            self.members.append(member)
            await self._rebalance()

    async def leave(self, member: MemoryConsumer) -> None:
        """Take `member` out and rebalance the others.

        The leaving member's listener is not called: Kafka's consumer does not call it on stop.
        """
        async with self._lock:
            if member in self.members:
                member.drop_assignment()
                self.members.remove(member)
                await self._rebalance()

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Record `offsets` and wake whoever waits for a commit of this group."""
        self.committed.update(offsets)
        async with self._commits:
            self._commits.notify_all()

    async def wait_for_commit(self) -> None:
        """Return after the next commit of this group."""
        async with self._commits:
            await self._commits.wait()

    async def _rebalance(self) -> None:
        self.generation += 1
        for member in self.members:
            await member.revoke_all()
        plan: dict[MemoryConsumer, set[TopicPartition]] = {m: set() for m in self.members}
        for topic in sorted({t for m in self.members for t in m.topics}):
            takers = [m for m in self.members if topic in m.topics]
            count = len(self.broker.topic(topic).logs)
            for partition in range(count):
                plan[takers[partition % len(takers)]].add(TopicPartition(topic, partition))
        for member, partitions in plan.items():
            await member.assign(frozenset(partitions))
        logger.debug("group %s generation %d: %d members", self.name, self.generation, len(plan))


class MemoryBroker:
    """An in-process broker with Kafka's semantics.

    Besides the `Broker` protocol it answers what a test or a developer wants to look at:
    `topic(name).logs` (every record), `group(name)` (its committed offsets, and a way to wait
    for its next commit), `committed` and `end_offset`.

    Args:
        partitions: How many partitions a topic gets when it is first used.
        max_request_size: The largest record `publish` takes, counted as Kafka's producer does.

    Example:
        ```python
        app = App("billing", broker="memory://?partitions=8")
        ```
    """

    def __init__(
        self, partitions: int = DEFAULT_PARTITIONS, max_request_size: int = DEFAULT_MAX_REQUEST_SIZE
    ) -> None:
        if partitions < 1:
            raise ConfigurationError(f"a topic needs at least one partition, got {partitions}")
        if max_request_size < 1:
            raise ConfigurationError(f"max_request_size must be positive, got {max_request_size}")
        self.partitions = partitions
        self.max_request_size = max_request_size
        self._topics: dict[str, MemoryTopic] = {}
        self._groups: dict[str, MemoryGroup] = {}
        self._open = False

    @classmethod
    def from_url(cls, url: str) -> MemoryBroker:
        """Build from ``memory://``, ``memory://?partitions=N&max_request_size=BYTES``."""
        parts = urlsplit(url)
        if parts.netloc or parts.path not in ("", "/"):
            raise ConfigurationError(
                f"a memory broker URL is memory:// or memory://?partitions=N, got {quoted(url)}"
            )
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = set(query) - {"partitions", "max_request_size"}
        if unknown:
            raise ConfigurationError(
                f"unknown memory broker option {quoted(sorted(unknown)[0])} in {quoted(url)}"
            )
        partitions = _positive(query, "partitions", DEFAULT_PARTITIONS, MAX_PARTITIONS)
        max_size = _positive(query, "max_request_size", DEFAULT_MAX_REQUEST_SIZE, MAX_REQUEST_SIZE)
        return cls(partitions, max_size)

    @property
    def url(self) -> str:
        if self.max_request_size == DEFAULT_MAX_REQUEST_SIZE:
            return f"memory://?partitions={self.partitions}"
        return f"memory://?partitions={self.partitions}&max_request_size={self.max_request_size}"

    async def start(self) -> None:
        """Open for publishing (as Kafka's producer connects); nothing to connect to."""
        self._open = True

    async def close(self) -> None:
        """Stop publishing: a publish is complete when it returns, so nothing is left to flush."""
        self._open = False

    async def publish(
        self, topic: str, value: bytes | None, *, key: bytes | None = None, headers: Headers = ()
    ) -> tuple[TopicPartition, int]:
        if not self._open:
            raise PublishError("the memory broker is not started")
        size = record_size(value, key, headers)
        if size > self.max_request_size:
            raise RecordTooLarge(
                f"publishing to {topic!r} failed: the record is {size} bytes, over the "
                f"max_request_size of {self.max_request_size}"
            )
        target = self.topic(topic)
        partition = target.partition_for(key)
        offset = len(target.logs[partition])
        now_ms = time.time_ns() // 1_000_000
        target.append(Message(topic, partition, offset, key, value, headers, now_ms))
        return TopicPartition(topic, partition), offset

    async def enqueue(
        self, topic: str, value: bytes | None, *, key: bytes | None = None, headers: Headers = ()
    ) -> Delivery:
        """Publish at once: the delivery it returns is already done, as nothing is batched."""
        delivery: Delivery = asyncio.get_running_loop().create_future()
        delivery.set_result(await self.publish(topic, value, key=key, headers=headers))
        return delivery

    def consumer(
        self,
        topics: Sequence[str],
        *,
        group: str,
        listener: RebalanceListener,
        options: ConsumerOptions,
    ) -> MemoryConsumer:
        """Honours `options.auto_offset_reset`; Kafka's own options (`options.extra`,
        `options.group_instance_id`) mean nothing here and are ignored, so an app written for
        Kafka runs unchanged on memory (under `TestClient`, say)."""
        if options.auto_offset_reset not in (None, "earliest", "latest"):
            raise ConfigurationError(
                f"auto_offset_reset is 'earliest' or 'latest', got {options.auto_offset_reset!r}"
            )
        return MemoryConsumer(self, self.group(group), topics, listener, options)

    # -- inspection ------------------------------------------------------------------------

    def topic(self, name: str) -> MemoryTopic:
        """Return topic `name`, creating it with the default partition count on first use."""
        topic = self._topics.get(name)
        if topic is None:
            if not name:
                raise ConfigurationError("a topic name cannot be empty")
            topic = self._topics[name] = MemoryTopic(name, self.partitions)
        return topic

    def group(self, name: str) -> MemoryGroup:
        """Return consumer group `name`, creating it (with no members) on first use."""
        group = self._groups.get(name)
        if group is None:
            group = self._groups[name] = MemoryGroup(self, name)
        return group

    def end_offset(self, tp: TopicPartition) -> int:
        """The offset the next record of `tp` will get."""
        return len(self.topic(tp.topic).logs[tp.partition])

    def committed(self, group: str, tp: TopicPartition) -> int | None:
        """The offset `group` committed for `tp`, or None."""
        known = self._groups.get(group)
        return known.committed.get(tp) if known else None


def _positive(query: Mapping[str, list[str]], name: str, default: int, bound: int) -> int:
    raw = query.get(name, [str(default)])[-1]
    number = whole_number_text(raw)
    if number is None or not 1 <= number <= bound:
        raise ConfigurationError(
            f"{name} must be a positive whole number up to {bound}, got {quoted(raw)}"
        )
    return number


class MemoryConsumer:
    """A member of a memory broker group.

    Like Kafka's consumer, it refuses to fetch, commit, pause, resume or report offsets while it
    is not started (a `BrokerError`), and its listener is told of rebalances, not of its own stop.
    """

    def __init__(
        self,
        broker: MemoryBroker,
        group: MemoryGroup,
        topics: Sequence[str],
        listener: RebalanceListener,
        options: ConsumerOptions,
    ) -> None:
        if not topics:
            raise ConfigurationError("a consumer needs at least one topic")
        self.broker = broker
        self.group = group
        self.topics = tuple(topics)
        self.listener = listener
        self.options = options
        self.wakeup = asyncio.Event()
        self._assigned: frozenset[TopicPartition] = frozenset()
        self._positions: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._started = False

    async def start(self) -> None:
        if self._started:
            raise StateError(f"this member of group {self.group.name} is already started")
        for name in self.topics:
            self.broker.topic(name).subscribers.add(self)
        self._started = True
        await self.group.join(self)

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        for name in self.topics:
            self.broker.topic(name).subscribers.discard(self)
        await self.group.leave(self)
        self.wakeup.set()

    def _check_started(self) -> None:
        if not self._started:
            raise BrokerError("the memory consumer is not started")

    def assignment(self) -> frozenset[TopicPartition]:
        return self._assigned

    def pause(self, partitions: Collection[TopicPartition]) -> None:
        self._check_started()
        self._paused.update(partitions)

    def resume(self, partitions: Collection[TopicPartition]) -> None:
        self._check_started()
        self._paused.difference_update(partitions)
        self.wakeup.set()

    async def getmany(self, timeout: float) -> Mapping[TopicPartition, Sequence[Message]]:
        self._check_started()
        batch = self._collect()
        if batch or timeout <= 0:
            return batch
        self.wakeup.clear()
        try:
            async with asyncio.timeout(timeout):
                await self.wakeup.wait()
        except TimeoutError:
            return {}
        return self._collect()  # empty when woken by stop()

    def _collect(self) -> dict[TopicPartition, list[Message]]:
        """At most `max_records` records and, like a Kafka fetch, about `fetch_bytes` bytes (the
        record that passes it included, so a record larger than that still comes)."""
        budget = self.options.max_records
        room = self.options.fetch_bytes
        batch: dict[TopicPartition, list[Message]] = {}
        for tp, position in self._positions.items():
            if tp in self._paused:
                continue
            log = self.broker.topic(tp.topic).logs[tp.partition]
            if position < len(log):
                records = log[position : position + budget]
                if room is not None:
                    records, room = _within(records, room)
                batch[tp] = records
                self._positions[tp] = position + len(records)
                budget -= len(records)
                if budget <= 0 or room == 0:
                    break
        return batch

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._check_started()
        foreign = [tp for tp in offsets if tp not in self._assigned]
        if foreign:
            raise CommitError(
                f"group {self.group.name} rebalanced: {', '.join(map(str, foreign))} "
                "is no longer assigned to this member"
            )
        await self.group.commit(offsets)

    async def offsets(self) -> dict[TopicPartition, PartitionOffsets]:
        self._check_started()
        return {
            tp: PartitionOffsets(self.group.committed.get(tp), self.broker.end_offset(tp))
            for tp in self._assigned
        }

    def positions(self) -> dict[TopicPartition, FetchPosition]:
        return {
            tp: FetchPosition(position, self.broker.end_offset(tp))
            for tp, position in self._positions.copy().items()
        }

    async def revoke_all(self) -> None:
        """Called by the group: give up every partition, telling the listener first.

        A listener that raises is logged and the rebalance goes on, as in Kafka's consumer.
        """
        if not self._assigned:
            return
        revoked = self._assigned
        try:
            await self.listener.on_partitions_revoked(revoked)
        except Exception:
            logger.exception("rebalance listener failed on revoke in group %s", self.group.name)
        self.drop_assignment()

    def drop_assignment(self) -> None:
        """Called by the group: forget every partition without telling the listener (on leave)."""
        revoked = self._assigned
        self._assigned = frozenset()
        self._positions.clear()
        self._paused.difference_update(revoked)

    async def assign(self, partitions: frozenset[TopicPartition]) -> None:
        """Called by the group: take `partitions`, starting at their committed offsets.

        A listener that raises is logged and the member keeps the partitions, as in Kafka's
        consumer.
        """
        self._assigned = partitions
        for tp in sorted(partitions):
            committed = self.group.committed.get(tp)
            if committed is None:
                latest = (self.options.auto_offset_reset or DEFAULT_START) == "latest"
                committed = self.broker.end_offset(tp) if latest else 0
            self._positions[tp] = committed
        if partitions:
            try:
                await self.listener.on_partitions_assigned(partitions)
            except Exception:
                logger.exception("rebalance listener failed on assign in group %s", self.group.name)
        self.wakeup.set()


def _within(records: list[Message], room: int) -> tuple[list[Message], int]:
    """The first of `records` up to the one that fills `room` bytes, and the room left."""
    for count, record in enumerate(records, 1):
        room -= message_bytes(record)
        if room <= 0:
            return records[:count], 0
    return records, room
