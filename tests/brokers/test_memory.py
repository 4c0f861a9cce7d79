"""The memory broker: Kafka's partitioning, groups, offsets and flow control inside one process."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.partitioner import DefaultPartitioner

from taskflow.brokers.base import ConsumerOptions
from taskflow.brokers.memory import MemoryBroker, MemoryConsumer
from taskflow.exceptions import CommitError, ConfigurationError, StateError
from taskflow.message import TopicPartition


class Recorder:
    """A rebalance listener that writes down what it is told, tagged with its member's name."""

    def __init__(self, name: str, log: list[tuple[str, str, frozenset[TopicPartition]]]) -> None:
        self.name = name
        self.log = log

    async def on_partitions_revoked(self, revoked: frozenset[TopicPartition]) -> None:
        self.log.append((self.name, "revoked", revoked))

    async def on_partitions_assigned(self, assigned: frozenset[TopicPartition]) -> None:
        self.log.append((self.name, "assigned", assigned))


def member(
    broker: MemoryBroker,
    name: str,
    log: list[tuple[str, str, frozenset[TopicPartition]]] | None = None,
    *,
    group: str = "g",
    topics: tuple[str, ...] = ("t",),
    reset: str = "earliest",
) -> MemoryConsumer:
    return broker.consumer(
        topics,
        group=group,
        listener=Recorder(name, [] if log is None else log),
        options=ConsumerOptions(auto_offset_reset=reset),
    )


async def started(partitions: int) -> MemoryBroker:
    """A memory broker open for publishing."""
    broker = MemoryBroker(partitions)
    await broker.start()
    return broker


def tps(topic: str, *partitions: int) -> frozenset[TopicPartition]:
    return frozenset(TopicPartition(topic, p) for p in partitions)


async def fetch_values(consumer: MemoryConsumer) -> dict[int, list[bytes]]:
    """Everything fetchable right now, by partition."""
    batch = await consumer.getmany(timeout=0)
    return {tp.partition: [m.value for m in records] for tp, records in batch.items()}


# -- partitioning ---------------------------------------------------------------------------


@pytest.mark.parametrize("partitions", [1, 3, 4, 8, 12])
async def test_a_key_lands_on_the_partition_kafka_would_pick(partitions: int) -> None:
    broker = await started(partitions)
    kafka = DefaultPartitioner()
    everything = list(range(partitions))
    for key in (b"a", b"order-1", b"customer:42", "ключ".encode(), b"\x00\xff" * 9, b""):
        tp, _ = await broker.publish("t", b"v", key=key)
        assert tp.partition == kafka(key, everything, everything), key


async def test_one_key_always_goes_to_one_partition_in_order() -> None:
    broker = await started(8)
    placed = [await broker.publish("t", str(i).encode(), key=b"customer-7") for i in range(20)]
    assert len({tp for tp, _ in placed}) == 1
    assert [offset for _, offset in placed] == list(range(20))


async def test_keyless_records_go_round_robin() -> None:
    broker = await started(3)
    placed = [await broker.publish("t", b"v") for _ in range(7)]
    assert [tp.partition for tp, _ in placed] == [0, 1, 2, 0, 1, 2, 0]


async def test_offsets_count_per_partition() -> None:
    broker = await started(2)
    placed = [await broker.publish("t", b"v") for _ in range(5)]
    assert [(tp.partition, offset) for tp, offset in placed] == [
        (0, 0),
        (1, 0),
        (0, 1),
        (1, 1),
        (0, 2),
    ]
    assert broker.end_offset(TopicPartition("t", 0)) == 3
    assert broker.end_offset(TopicPartition("t", 1)) == 2


async def test_a_record_keeps_its_key_value_and_headers() -> None:
    broker = await started(1)
    await broker.publish("t", b"body", key=b"k", headers=(("trace", b"1"), ("trace", b"2")))
    consumer = member(broker, "a")
    await consumer.start()
    batch = await consumer.getmany(timeout=0)
    (record,) = batch[TopicPartition("t", 0)]
    assert (record.key, record.value, record.offset) == (b"k", b"body", 0)
    assert record.headers == (("trace", b"1"), ("trace", b"2"))
    assert record.header("trace") == b"2"
    await consumer.stop()


# -- URLs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "partitions"),
    [
        ("memory://", 4),
        ("memory:///", 4),
        ("memory://?partitions=8", 8),
        ("memory://?partitions=1", 1),
    ],
)
def test_url_sets_the_partition_count(url: str, partitions: int) -> None:
    broker = MemoryBroker.from_url(url)
    assert broker.partitions == partitions
    assert broker.url == f"memory://?partitions={partitions}"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("memory://?partition=8", "unknown memory broker option 'partition'"),
        ("memory://?partitions=8&acks=all", "unknown memory broker option 'acks'"),
        ("memory://localhost", "memory:// or memory://?partitions=N"),
        ("memory://?partitions=0", "positive whole number up to 1024, got '0'"),
        ("memory://?partitions=-2", "positive whole number up to 1024, got '-2'"),
        ("memory://?partitions=eight", "positive whole number up to 1024, got 'eight'"),
        ("memory://?partitions=2.5", "positive whole number up to 1024, got '2.5'"),
        ("memory://?partitions=", "positive whole number up to 1024, got ''"),
    ],
)
def test_a_bad_url_says_what_is_wrong(url: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=complaint.replace("?", r"\?")):
        MemoryBroker.from_url(url)


# -- groups ---------------------------------------------------------------------------------


async def test_two_members_split_the_partitions_and_each_record_reaches_one() -> None:
    broker = await started(4)
    a, b = member(broker, "a"), member(broker, "b")
    await a.start()
    await b.start()
    assert a.assignment() | b.assignment() == tps("t", 0, 1, 2, 3)
    assert not a.assignment() & b.assignment()
    assert a.assignment()
    assert b.assignment()

    for i in range(16):
        await broker.publish("t", str(i).encode())
    got_a, got_b = await fetch_values(a), await fetch_values(b)
    assert set(got_a) == {tp.partition for tp in a.assignment()}
    assert set(got_b) == {tp.partition for tp in b.assignment()}
    everything = sorted(int(v) for batch in (got_a, got_b) for vs in batch.values() for v in vs)
    assert everything == list(range(16))
    await a.stop()
    await b.stop()


async def test_a_leaving_member_is_not_told_and_the_others_take_its_partitions() -> None:
    broker = await started(4)
    log: list[tuple[str, str, frozenset[TopicPartition]]] = []
    a, b = member(broker, "a", log), member(broker, "b", log)
    await a.start()
    await b.start()
    held_by_a = a.assignment()
    log.clear()

    await b.stop()

    assert log == [("a", "revoked", held_by_a), ("a", "assigned", tps("t", 0, 1, 2, 3))]
    assert a.assignment() == tps("t", 0, 1, 2, 3)
    assert b.assignment() == frozenset()
    await a.stop()


async def test_a_joining_member_takes_partitions_after_the_owner_gave_them_up() -> None:
    broker = await started(2)
    log: list[tuple[str, str, frozenset[TopicPartition]]] = []
    a, b = member(broker, "a", log), member(broker, "b", log)
    await a.start()
    assert log == [("a", "assigned", tps("t", 0, 1))]
    await b.start()
    revoke = log.index(("a", "revoked", tps("t", 0, 1)))
    assigned_b = next(i for i, (who, what, _) in enumerate(log) if (who, what) == ("b", "assigned"))
    assert revoke < assigned_b
    await a.stop()
    await b.stop()


async def test_a_new_member_resumes_at_the_committed_offset() -> None:
    broker = await started(1)
    tp = TopicPartition("t", 0)
    for i in range(5):
        await broker.publish("t", str(i).encode())
    first = member(broker, "first")
    await first.start()
    assert await fetch_values(first) == {0: [b"0", b"1", b"2", b"3", b"4"]}
    await first.commit({tp: 3})  # handled 0..2; 3 and 4 were fetched but not finished
    await first.stop()
    assert broker.committed("g", tp) == 3

    second = member(broker, "second")
    await second.start()
    assert await fetch_values(second) == {0: [b"3", b"4"]}  # at-least-once: redelivered
    await second.stop()


async def test_groups_keep_their_own_offsets() -> None:
    broker = await started(1)
    await broker.publish("t", b"x")
    billing, audit = member(broker, "a", group="billing"), member(broker, "b", group="audit")
    await billing.start()
    await audit.start()
    assert await fetch_values(billing) == {0: [b"x"]}
    assert await fetch_values(audit) == {0: [b"x"]}
    await billing.commit({TopicPartition("t", 0): 1})
    assert broker.committed("billing", TopicPartition("t", 0)) == 1
    assert broker.committed("audit", TopicPartition("t", 0)) is None
    await billing.stop()
    await audit.stop()


async def test_committing_a_partition_not_assigned_is_refused() -> None:
    broker = await started(2)
    a, b = member(broker, "a"), member(broker, "b")
    await a.start()
    await b.start()
    (foreign,) = b.assignment()
    with pytest.raises(CommitError, match=r"no longer assigned"):
        await a.commit({foreign: 1})
    assert broker.committed("g", foreign) is None
    await a.stop()
    await b.stop()


async def test_a_member_started_twice_is_refused() -> None:
    broker = await started(2)
    a, b = member(broker, "a"), member(broker, "b")
    await a.start()
    with pytest.raises(StateError, match="already started"):
        await a.start()
    await b.start()
    assert (a.assignment(), b.assignment()) == (tps("t", 0), tps("t", 1))  # one member, one share
    await a.stop()
    await b.stop()


async def test_a_stopped_member_can_start_again_and_resumes_at_its_commit() -> None:
    broker = await started(1)
    for value in (b"0", b"1"):
        await broker.publish("t", value)
    a = member(broker, "a")
    await a.start()
    await a.commit({TopicPartition("t", 0): 1})
    await a.stop()
    await a.start()
    assert await fetch_values(a) == {0: [b"1"]}
    await a.stop()


@pytest.mark.parametrize(
    ("reset", "expected"), [("earliest", [b"old", b"new"]), ("latest", [b"new"])]
)
async def test_auto_offset_reset_applies_without_a_committed_offset(
    reset: str, expected: list[bytes]
) -> None:
    broker = await started(1)
    await broker.publish("t", b"old")
    consumer = member(broker, "a", reset=reset)
    await consumer.start()
    await broker.publish("t", b"new")
    assert await fetch_values(consumer) == {0: expected}
    await consumer.stop()


async def test_auto_offset_reset_does_not_override_a_committed_offset() -> None:
    broker = await started(1)
    for value in (b"0", b"1", b"2"):
        await broker.publish("t", value)
    first = member(broker, "a")
    await first.start()
    await first.commit({TopicPartition("t", 0): 1})
    await first.stop()
    latest = member(broker, "b", reset="latest")
    await latest.start()
    assert await fetch_values(latest) == {0: [b"1", b"2"]}
    await latest.stop()


def test_an_unknown_auto_offset_reset_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="'earliest' or 'latest'"):
        member(MemoryBroker(), "a", reset="smallest")


async def test_a_paused_partition_is_not_fetched_until_resumed() -> None:
    broker = await started(2)
    consumer = member(broker, "a")
    await consumer.start()
    zero, one = TopicPartition("t", 0), TopicPartition("t", 1)
    consumer.pause([zero])
    for i in range(4):
        await broker.publish("t", str(i).encode())
    assert await fetch_values(consumer) == {1: [b"1", b"3"]}
    assert await consumer.getmany(timeout=0.01) == {}

    consumer.resume([zero])
    assert await fetch_values(consumer) == {0: [b"0", b"2"]}
    assert consumer.assignment() == frozenset({zero, one})
    await consumer.stop()


async def test_getmany_wakes_when_a_record_arrives() -> None:
    broker = await started(1)
    consumer = member(broker, "a")
    await consumer.start()
    waiting = asyncio.create_task(consumer.getmany(timeout=60))
    await asyncio.sleep(0)  # let it find nothing and wait
    assert not waiting.done()
    await broker.publish("t", b"late")
    async with asyncio.timeout(5):  # not the 60 s: the record woke it
        batch = await waiting
    assert [m.value for m in batch[TopicPartition("t", 0)]] == [b"late"]
    await consumer.stop()


async def test_getmany_respects_max_records() -> None:
    broker = await started(1)
    for i in range(5):
        await broker.publish("t", str(i).encode())
    consumer = broker.consumer(
        ["t"], group="g", listener=Recorder("a", []), options=ConsumerOptions(max_records=2)
    )
    await consumer.start()
    assert await fetch_values(consumer) == {0: [b"0", b"1"]}
    assert await fetch_values(consumer) == {0: [b"2", b"3"]}
    assert await fetch_values(consumer) == {0: [b"4"]}
    await consumer.stop()
