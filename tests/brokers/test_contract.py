"""The Broker protocol's observable behaviour, run against both brokers: memory:// is Kafka's twin.

Each test runs on the memory broker and, marked ``kafka``, on the session's real Kafka-protocol
broker through `KafkaBroker`. What a test asserts is what an app can see through the protocol:
what is published where, what a member fetches, what the listener is told, what is refused.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from taskflow.brokers.base import Broker, Consumer, ConsumerOptions
from taskflow.brokers.kafka import KafkaBroker
from taskflow.brokers.memory import MemoryBroker
from taskflow.brokers.partitioner import partition_for_key
from taskflow.exceptions import BrokerError, CommitError, PublishError, StateError
from taskflow.message import Message, TopicPartition
from tests._tansu import create_topic
from tests.brokers.test_kafka import TEST_OPTIONS, WAIT, Listener

PARTITIONS = 4


@dataclass
class Setup:
    """A broker (not started), a fresh topic of `PARTITIONS` partitions and a fresh group name."""

    broker: Broker
    topic: str
    group: str

    def consumer(self, listener: Listener | None = None, *, reset: str = "earliest") -> Consumer:
        return self.broker.consumer(
            [self.topic],
            group=self.group,
            listener=listener or Listener(),
            options=ConsumerOptions(auto_offset_reset=reset),
        )

    def partition(self, partition: int) -> TopicPartition:
        return TopicPartition(self.topic, partition)


@pytest.fixture(params=["memory", pytest.param("kafka", marks=pytest.mark.kafka)])
async def setup(request: pytest.FixtureRequest, unique: str) -> Setup:
    topic = f"{unique}-events"
    if request.param == "memory":
        return Setup(MemoryBroker(PARTITIONS), topic, f"{unique}-g")
    bootstrap: str = request.getfixturevalue("bootstrap")
    await create_topic(bootstrap, topic, PARTITIONS)
    return Setup(KafkaBroker([bootstrap], TEST_OPTIONS), topic, f"{unique}-g")


@pytest.fixture
async def broker(setup: Setup) -> AsyncIterator[Broker]:
    """The setup's broker, started."""
    await setup.broker.start()
    try:
        yield setup.broker
    finally:
        await setup.broker.close()


async def fetch(consumer: Consumer, count: int) -> dict[TopicPartition, list[Message]]:
    """Fetch until `count` records came (on Kafka, polling is also how a member joins)."""
    got: dict[TopicPartition, list[Message]] = {}
    async with asyncio.timeout(WAIT):
        while sum(map(len, got.values())) < count:
            for tp, records in (await consumer.getmany(0.2)).items():
                got.setdefault(tp, []).extend(records)
    return got


async def values(consumer: Consumer, count: int) -> dict[int, list[bytes]]:
    return {
        tp.partition: [m.value for m in ms] for tp, ms in (await fetch(consumer, count)).items()
    }


async def until(consumer: Consumer, done: Callable[[], bool]) -> None:
    """Poll (fetching nothing that matters) until `done()`."""
    async with asyncio.timeout(WAIT):
        while not done():
            assert await consumer.getmany(0.1) == {}


def positioned(consumer: Consumer) -> bool:
    """Assigned, with the fetch position of every partition known."""
    positions = consumer.positions()
    return bool(consumer.assignment()) and all(
        positions.get(tp) is not None and positions[tp].position is not None
        for tp in consumer.assignment()
    )


def key_for(partition: int) -> bytes:
    """A key that Kafka's default partitioner puts on `partition`."""
    return next(
        key
        for n in range(10_000)
        if partition_for_key(key := b"key-%d" % n, PARTITIONS) == partition
    )


# -- publishing -----------------------------------------------------------------------------


async def test_publishing_before_start_is_a_publish_error(setup: Setup) -> None:
    with pytest.raises(PublishError, match="not started"):
        await setup.broker.publish(setup.topic, b"early")


async def test_publishing_after_close_is_a_publish_error(setup: Setup) -> None:
    await setup.broker.start()
    await setup.broker.publish(setup.topic, b"open")
    await setup.broker.close()
    with pytest.raises(PublishError, match="not started"):
        await setup.broker.publish(setup.topic, b"closed")


async def test_a_key_goes_to_kafkas_partition_at_the_next_offset(
    setup: Setup, broker: Broker
) -> None:
    placed = [await broker.publish(setup.topic, b"%d" % n, key=b"customer-7") for n in range(3)]
    expected = setup.partition(partition_for_key(b"customer-7", PARTITIONS))
    assert placed == [(expected, 0), (expected, 1), (expected, 2)]


async def test_a_member_gets_key_value_headers_and_offsets_as_published(
    setup: Setup, broker: Broker
) -> None:
    headers = (("trace", b"1"), ("trace", b"2"), ("empty", b""))
    tp, offset = await broker.publish(setup.topic, b"body", key=b"k", headers=headers)
    listener = Listener()
    consumer = setup.consumer(listener)
    await consumer.start()
    try:
        [[record]] = (await fetch(consumer, 1)).values()
        assert (record.topic_partition, record.offset) == (tp, offset)
        assert (record.key, record.value, record.headers) == (b"k", b"body", headers)
        assert isinstance(record.timestamp_ms, int)
        everything = frozenset(setup.partition(p) for p in range(PARTITIONS))
        assert consumer.assignment() == everything
        assert listener.events == [("assigned", everything)]
    finally:
        await consumer.stop()


# -- a consumer's life ----------------------------------------------------------------------


async def refuses_all_but_assignment(consumer: Consumer, tp: TopicPartition) -> None:
    """A consumer not started: no assignment, no positions, and a BrokerError for the rest."""

    async def pause() -> None:
        consumer.pause([tp])

    async def resume() -> None:
        consumer.resume([tp])

    assert (consumer.assignment(), consumer.positions()) == (frozenset(), {})
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: consumer.getmany(0),
        lambda: consumer.commit({tp: 1}),
        consumer.offsets,
        pause,
        resume,
    ]
    for call in calls:
        with pytest.raises(BrokerError):
            await call()


async def test_a_consumer_answers_only_while_started(setup: Setup, broker: Broker) -> None:
    consumer = setup.consumer()
    await refuses_all_but_assignment(consumer, setup.partition(0))
    await consumer.start()
    await until(consumer, lambda: bool(consumer.assignment()))
    await consumer.stop()
    await consumer.stop()  # twice is fine
    await refuses_all_but_assignment(consumer, setup.partition(0))


async def test_stopping_does_not_call_the_listener(setup: Setup, broker: Broker) -> None:
    listener = Listener()
    consumer = setup.consumer(listener)
    await consumer.start()
    await until(consumer, lambda: bool(consumer.assignment()))
    await consumer.stop()
    assert [event for event, _ in listener.events] == ["assigned"]


async def test_committing_a_partition_not_assigned_is_a_commit_error(
    setup: Setup, broker: Broker
) -> None:
    consumer = setup.consumer()
    await consumer.start()
    try:
        await until(consumer, lambda: bool(consumer.assignment()))
        with pytest.raises(CommitError):
            await consumer.commit({TopicPartition(f"{setup.topic}-other", 0): 1})
    finally:
        await consumer.stop()


async def test_committed_offsets_show_in_offsets_and_a_new_member_resumes_there(
    setup: Setup, broker: Broker
) -> None:
    tp = setup.partition(1)
    for n in range(5):
        await broker.publish(setup.topic, b"%d" % n, key=key_for(1))
    first = setup.consumer()
    await first.start()
    try:
        assert await values(first, 5) == {1: [b"0", b"1", b"2", b"3", b"4"]}
        await first.commit({tp: 3})  # 3 and 4 were fetched, not finished
        offsets = await first.offsets()
        assert (offsets[tp].committed, offsets[tp].high_watermark) == (3, 5)
        assert offsets[setup.partition(0)].committed is None
    finally:
        await first.stop()
    second = setup.consumer()
    await second.start()
    try:
        assert await values(second, 2) == {1: [b"3", b"4"]}  # at-least-once: fetched again
    finally:
        await second.stop()


@pytest.mark.parametrize(
    ("reset", "expected"), [("earliest", [b"old", b"new"]), ("latest", [b"new"])]
)
async def test_auto_offset_reset_applies_to_a_group_without_commits(
    setup: Setup, broker: Broker, reset: str, expected: list[bytes]
) -> None:
    await broker.publish(setup.topic, b"old", key=key_for(0))
    consumer = setup.consumer(reset=reset)
    await consumer.start()
    try:
        if reset == "latest":  # where "latest" is must be known before the next record
            await until(consumer, lambda: positioned(consumer))
        await broker.publish(setup.topic, b"new", key=key_for(0))
        assert await values(consumer, len(expected)) == {0: expected}
    finally:
        await consumer.stop()


async def test_a_paused_partition_is_held_back_until_resumed(setup: Setup, broker: Broker) -> None:
    consumer = setup.consumer()
    await consumer.start()
    try:
        await until(consumer, lambda: bool(consumer.assignment()))
        consumer.pause([setup.partition(1)])
        await broker.publish(setup.topic, b"held", key=key_for(1))
        await broker.publish(setup.topic, b"free", key=key_for(2))
        assert await values(consumer, 1) == {2: [b"free"]}
        assert await consumer.getmany(0.3) == {}
        consumer.resume([setup.partition(1)])
        assert await values(consumer, 1) == {1: [b"held"]}
    finally:
        await consumer.stop()


async def test_pausing_a_partition_not_assigned_is_accepted_and_changes_nothing(
    setup: Setup, broker: Broker
) -> None:
    other = TopicPartition(f"{setup.topic}-other", 0)
    consumer = setup.consumer()
    await consumer.start()
    try:
        await until(consumer, lambda: bool(consumer.assignment()))
        consumer.pause([other, setup.partition(1)])
        await broker.publish(setup.topic, b"held", key=key_for(1))
        await broker.publish(setup.topic, b"free", key=key_for(2))
        assert await values(consumer, 1) == {2: [b"free"]}
        consumer.resume([other, setup.partition(1)])
        assert await values(consumer, 1) == {1: [b"held"]}
    finally:
        await consumer.stop()


async def test_a_fetch_waiting_when_the_member_stops_returns_nothing(
    setup: Setup, broker: Broker
) -> None:
    consumer = setup.consumer()
    await consumer.start()
    await until(consumer, lambda: bool(consumer.assignment()))
    fetching = asyncio.create_task(consumer.getmany(WAIT))
    await asyncio.sleep(0)  # it waits for records now
    await consumer.stop()
    async with asyncio.timeout(WAIT / 2):
        assert await fetching == {}


# -- starting twice -------------------------------------------------------------------------


def _running_tasks() -> set[asyncio.Task[object]]:
    return {task for task in asyncio.all_tasks() if not task.done()}


async def test_starting_a_started_consumer_is_a_state_error_and_leaves_nothing_behind(
    setup: Setup, broker: Broker
) -> None:
    await broker.publish(setup.topic, b"one", key=key_for(0))
    before = _running_tasks()  # the producer's, connected now
    consumer = setup.consumer()
    await consumer.start()
    try:
        with pytest.raises(StateError, match="already started"):
            await consumer.start()
        assert await values(consumer, 1) == {0: [b"one"]}  # the member goes on
    finally:
        await consumer.stop()
    assert _running_tasks() - before == set()


async def test_starting_a_started_broker_does_nothing(setup: Setup) -> None:
    before = _running_tasks()
    await setup.broker.start()
    await setup.broker.start()
    await setup.broker.publish(setup.topic, b"once")
    await setup.broker.close()
    assert _running_tasks() - before == set()  # no producer left behind
    with pytest.raises(PublishError, match="not started"):
        await setup.broker.publish(setup.topic, b"closed")


# -- rebalance listeners --------------------------------------------------------------------


class Failing(Listener):
    """A listener that raises after writing down what it was told."""

    def __init__(self, on: str) -> None:
        super().__init__()
        self.on = on

    async def on_partitions_revoked(self, revoked: frozenset[TopicPartition]) -> None:
        await super().on_partitions_revoked(revoked)
        if self.on == "revoked":
            raise RuntimeError("listener failed on revoke")

    async def on_partitions_assigned(self, assigned: frozenset[TopicPartition]) -> None:
        await super().on_partitions_assigned(assigned)
        if self.on == "assigned":
            raise RuntimeError("listener failed on assign")


def logged_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        str(record.exc_info[1])
        for record in caplog.records
        if record.levelno == logging.ERROR and record.exc_info and record.exc_info[1]
    ]


async def test_a_listener_failing_on_assign_is_logged_and_the_member_keeps_its_partitions(
    setup: Setup, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    await broker.publish(setup.topic, b"x", key=key_for(3))
    listener = Failing("assigned")
    consumer = setup.consumer(listener)
    await consumer.start()
    try:
        assert await values(consumer, 1) == {3: [b"x"]}
        assert len(consumer.assignment()) == PARTITIONS
        assert logged_failures(caplog) == ["listener failed on assign"]
    finally:
        await consumer.stop()


async def test_a_listener_failing_on_revoke_is_logged_and_the_rebalance_goes_on(
    setup: Setup, broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    failing = Failing("revoked")
    first, second = setup.consumer(failing), setup.consumer()
    await first.start()
    try:
        await until(first, lambda: bool(first.assignment()))
        await second.start()
        try:
            async with asyncio.timeout(WAIT):  # both poll, as members of a group do
                while not (first.assignment() and second.assignment()):
                    await asyncio.gather(first.getmany(0.1), second.getmany(0.1))
            assert first.assignment() | second.assignment() == {
                setup.partition(p) for p in range(PARTITIONS)
            }
            assert not first.assignment() & second.assignment()
            assert [event for event, _ in failing.events][:2] == ["assigned", "revoked"]
            assert logged_failures(caplog) == ["listener failed on revoke"]
        finally:
            await second.stop()
    finally:
        await first.stop()
