"""Publishing without waiting on a real broker: queued records survive a SIGTERM, and a record
the broker refuses is logged and counted, never raised in the code that published it."""

from __future__ import annotations

import asyncio
import json
import re
import signal

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from tests._process import AppProcess
from tests._tansu import TansuBroker, create_topic
from tests.kafka.test_examples_kafka import free_port, get

PUBLISHER = "tests.apps.nowait_publisher:app"
COUNT = 3000


async def read_all(bootstrap: str, topic: str, count: int) -> list[ConsumerRecord]:
    """The first `count` records of `topic`, from every partition (no group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        records: list[ConsumerRecord] = []
        async with asyncio.timeout(60):
            while len(records) < count:
                batches = await consumer.getmany(timeout_ms=500)
                records += [record for batch in batches.values() for record in batch]
        return records
    finally:
        await consumer.stop()


async def end_offsets(bootstrap: str, topic: str) -> int:
    """How many records the topic holds, over its partitions."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = await consumer.end_offsets(partitions)
        return sum(ends.values())
    finally:
        await consumer.stop()


@pytest.fixture
def publisher_env(app_env: dict[str, str], topic: str) -> dict[str, str]:
    return {**app_env, "NOWAIT_TOPIC": topic, "NOWAIT_COUNT": str(COUNT)}


async def test_records_queued_without_waiting_are_all_delivered_by_a_sigterm_shutdown(
    publisher_env: dict[str, str], bootstrap: str, topic: str
) -> None:
    env = {
        **publisher_env,
        # Nothing leaves before the SIGTERM: the batches wait far longer than the broker's close
        # time, unless shutdown sends them at once.
        "TASKFLOW_KAFKA_LINGER_MS": "60000",
        "TASKFLOW_KAFKA_MAX_BATCH_SIZE": str(4 * 1024 * 1024),
    }
    with AppProcess(PUBLISHER, env=env) as app:
        await asyncio.to_thread(app.wait_for, rf"queued {COUNT} records")
        assert await end_offsets(bootstrap, topic) == 0  # all still queued in the producer
        app.send(signal.SIGTERM)
        code = await asyncio.to_thread(app.wait, 60)

    assert code == 0, app.log
    assert f"sending {COUNT} record(s) published without waiting before the broker closes" in (
        app.log
    )
    assert "not delivered" not in app.log
    records = await read_all(bootstrap, topic, COUNT)
    assert sorted(json.loads(r.value)["n"] for r in records) == list(range(COUNT))
    assert {r.key for r in records} == {f"k{n}".encode() for n in range(COUNT)}
    by_partition: dict[int, list[int]] = {}
    for record in records:
        by_partition.setdefault(record.partition, []).append(json.loads(record.value)["n"])
    assert all(ns == sorted(ns) for ns in by_partition.values())  # published order kept


async def test_a_topic_the_broker_refuses_is_logged_and_counted_and_the_worker_goes_on(
    publisher_env: dict[str, str], bootstrap: str, topic: str
) -> None:
    port = free_port()
    env = {
        **publisher_env,
        "NOWAIT_COUNT": "10",
        "NOWAIT_BAD_TOPIC": "no such topic!",  # not a valid topic name
        "TASKFLOW_KAFKA_REQUEST_TIMEOUT_MS": "3000",
    }
    with AppProcess(PUBLISHER, "--http-port", str(port), env=env) as app:
        await asyncio.to_thread(app.wait_for, "queued 10 records", 60)
        status, body = get(f"http://127.0.0.1:{port}/status")
        assert app.stop(signal.SIGTERM) == 0

    assert status == 200
    assert body["publishing"]["undelivered"] == 1
    [line] = [line for line in app.log.splitlines() if "not delivered" in line]
    assert "record to 'no such topic!' (key 'bad') published without waiting" in line
    assert "publishing to 'no such topic!' failed" in line
    assert "Traceback" not in app.log
    records = await read_all(bootstrap, topic, 10)
    assert sorted(json.loads(r.value)["n"] for r in records) == list(range(10))


async def test_records_the_broker_never_acknowledges_are_each_named_when_the_app_stops(
    app_env: dict[str, str],
) -> None:
    with TansuBroker() as broker:  # a broker of its own, to stop under the app
        bootstrap = broker.bootstrap
        await create_topic(bootstrap, "lost", 4)
        env = {
            **app_env,
            "TASKFLOW_BROKER": f"kafka://{bootstrap}",
            "NOWAIT_TOPIC": "lost",
            "NOWAIT_COUNT": "20",
            "TASKFLOW_KAFKA_LINGER_MS": "60000",  # still queued when the broker goes
            "TASKFLOW_KAFKA_REQUEST_TIMEOUT_MS": "2000",
        }
        with AppProcess(PUBLISHER, env=env) as app:
            await asyncio.to_thread(app.wait_for, "queued 20 records")
            await broker.stop_async()
            app.send(signal.SIGTERM)
            code = await asyncio.to_thread(app.wait, 60)

    assert code == 0, app.log  # the workers drained; the log says what was lost
    lost = [line for line in app.log.splitlines() if "was not delivered" in line]
    assert len(lost) == 20, app.log
    named = {re.search(r"\(key '(k\d+)'\)", line).group(1) for line in lost}  # type: ignore[union-attr]
    assert named == {f"k{n}" for n in range(20)}
    assert all("record to 'lost'" in line for line in lost)
    assert all("publishing to 'lost' failed: " in line for line in lost)  # the broker's error
