"""`Consumer.positions()`: where a consumer is in each partition, known without a broker request."""

from __future__ import annotations

import pytest
from aiokafka import AIOKafkaProducer

from taskflow.brokers.base import ConsumerOptions, FetchPosition
from taskflow.brokers.kafka import KafkaBroker
from taskflow.brokers.memory import MemoryBroker
from taskflow.message import TopicPartition
from tests.brokers.test_kafka import Listener, fetch, kafka, started_consumer

__all__ = ["kafka"]  # the fixture, imported for the Kafka test


async def test_memory_positions_follow_fetches_and_the_end_of_each_partition() -> None:
    broker = MemoryBroker(partitions=2)
    await broker.start()
    for n in range(3):
        await broker.publish("orders", b"%d" % n, key=b"k")
    busy = (await broker.publish("orders", b"3", key=b"k"))[0]
    idle = TopicPartition("orders", 1 - busy.partition)
    consumer = broker.consumer(
        ["orders"], group="g", listener=Listener(), options=ConsumerOptions(max_records=3)
    )
    assert consumer.positions() == {}  # not started: nothing assigned
    await consumer.start()
    assert consumer.positions() == {busy: FetchPosition(0, 4), idle: FetchPosition(0, 0)}
    await consumer.getmany(0)
    assert consumer.positions()[busy] == FetchPosition(3, 4)
    await consumer.stop()
    assert consumer.positions() == {}


@pytest.mark.kafka
async def test_kafka_positions_come_from_the_last_fetch(
    kafka: KafkaBroker, topic: str, unique: str, producer: AIOKafkaProducer
) -> None:
    for n in range(5):
        await producer.send_and_wait(topic, b"%d" % n, partition=0)
    consumer = await started_consumer(kafka, topic, f"{unique}-g", Listener())
    try:
        await fetch(consumer, 5)
        positions = consumer.positions()
        assert positions[TopicPartition(topic, 0)] == FetchPosition(5, 5)
        assert set(positions) == {TopicPartition(topic, p) for p in range(4)}
    finally:
        await consumer.stop()
    assert consumer.positions() == {}
