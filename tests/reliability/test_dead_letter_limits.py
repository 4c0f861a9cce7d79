"""Dead letters stay within the producer's limit, or are skipped, and never hold their partition.

On the memory broker, which refuses a record over `max_request_size` as Kafka's producer does.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from taskflow import App, Backoff, Message, RecordRefused, RecordTooLarge, Reject
from taskflow.brokers.base import record_size
from taskflow.brokers.memory import MemoryBroker
from taskflow.message import TopicPartition
from taskflow.testing import TestClient
from taskflow.workers.dead_letter import (
    BARE,
    MESSAGE_LIMIT,
    TRACEBACK_LIMIT,
    DeadLetterRecord,
    dead_letter,
    dead_letter_headers,
)

FAST = Backoff(initial=0.001, maximum=0.001, jitter=0)


def rejecting_app(handled: list[int], **options: Any) -> App:
    app = App("shop", **options)

    @app.consume("orders", retry=FAST, dead_letter="orders.DLQ")
    async def on_order(message: Message) -> None:
        if message.value.startswith(b"bad"):
            raise Reject(message.value[:64].decode())
        handled.append(message.offset)

    return app


def letters(client: TestClient) -> list[Message]:
    return list(client.broker.topic("orders.DLQ").logs[0])


def story(letter: Message) -> dict[str, bytes]:
    return {name: value for name, value in letter.headers if name.startswith("taskflow-")}


async def test_the_memory_broker_refuses_a_record_over_max_request_size_as_kafka_does() -> None:
    broker = MemoryBroker(1, max_request_size=1000)
    await broker.start()
    fits = b"x" * 900
    assert record_size(fits, None, ()) <= 1000
    await broker.publish("orders", fits)

    with pytest.raises(RecordTooLarge, match="over the max_request_size of 1000"):
        await broker.publish("orders", b"x" * 990, headers=(("trace", b"t"),))

    assert broker.end_offset(TopicPartition("orders", 0)) == 1
    assert MemoryBroker.from_url("memory://?max_request_size=5000").max_request_size == 5000
    assert MemoryBroker().max_request_size == 1_048_576  # aiokafka's producer default


async def test_what_taskflow_adds_to_a_dead_letter_is_bounded() -> None:
    app = App("shop")

    @app.consume("orders", retry=FAST, dead_letter="orders.DLQ")
    async def on_order(message: Message) -> None:
        raise Reject("é" * 100_000)  # 200 kB of two-byte characters

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", b"{}")
        await client.drain()
        [letter] = letters(client)

    ours = story(letter)
    message, trace = ours["taskflow-exception-message"], ours["taskflow-traceback"]
    assert len(message) <= MESSAGE_LIMIT
    assert message.decode() == "é" * ((MESSAGE_LIMIT - 3) // 2) + "…"  # cut between characters
    assert len(trace) <= TRACEBACK_LIMIT
    assert trace.decode().startswith("…")
    assert trace.decode().rstrip().endswith("é" * 100)  # the end, which names the exception
    assert letter.value == b"{}"  # the original is whole: it fits


async def test_a_rejected_record_too_large_to_dead_letter_whole_goes_without_its_value(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handled: list[int] = []
    limit = 20_000
    big = b"bad" + b"x" * (limit - 200)  # fits the broker alone, not with taskflow's headers

    async with TestClient(rejecting_app(handled), partitions=1) as client:
        client.broker.max_request_size = limit
        await client.publish("orders", big, key="k-1", headers={"trace": "t-1"})
        for n in range(10):
            await client.publish("orders", b"%d" % n)
        await client.drain()
        assert client.committed("shop", "orders", 0) == 11
        [letter] = letters(client)

    assert handled == list(range(1, 11))
    assert (letter.key, letter.value) == (b"k-1", b"")
    assert letter.headers[0] == ("trace", b"t-1")
    ours = story(letter)
    assert ours["taskflow-original-offset"] == b"0"
    assert ours["taskflow-original-size"] == str(len(big)).encode()
    assert ours["taskflow-original-sha256"] == hashlib.sha256(big).hexdigest().encode()
    assert ours["taskflow-value-omitted"].startswith(b"the whole dead letter is ")
    assert (
        f"over the producer's max_request_size {limit}".encode() in ours["taskflow-value-omitted"]
    )
    assert "taskflow-key-omitted" not in ours
    assert record_size(letter.value, letter.key, letter.headers) <= limit
    assert f"sent to orders.DLQ without its value ({len(big)} bytes): too large" in caplog.text
    [read] = client.dead_letters("orders.DLQ")
    assert read.value_omitted == ours["taskflow-value-omitted"].decode()
    assert (read.original_size, read.original_sha256) == (len(big), hashlib.sha256(big).hexdigest())
    assert (read.key, read.headers, read.key_omitted, read.headers_omitted) == (
        b"k-1",
        {"trace": "t-1"},
        False,
        False,
    )


def test_the_smallest_dead_letter_reads_back_what_it_left_out() -> None:
    original = Message("orders", 2, 41, b"k", b"v" * 10, (("trace", b"t"),), 1_700_000_000_000)
    ours = dead_letter_headers(original, "shop", Reject("too big"), 1, "rejected")
    letter = dead_letter(original, ours, BARE, "too large")
    read = DeadLetterRecord.from_message(
        Message("orders.DLQ", 0, 5, letter.key, letter.value, letter.headers)
    )
    assert (read.topic, read.partition, read.offset) == ("orders.DLQ", 0, 5)
    assert (read.original_topic, read.original_partition, read.original_offset) == ("orders", 2, 41)
    assert read.original_timestamp_ms == 1_700_000_000_000
    assert (read.reason, read.attempts, read.group) == ("rejected", 1, "shop")
    assert (read.exception_type, read.exception_message) == (
        "taskflow.exceptions.Reject",
        "too big",
    )
    assert (read.value, read.key, read.headers, read.raw_headers) == (b"", None, {}, ())
    assert (read.value_omitted, read.key_omitted, read.headers_omitted) == ("too large", True, True)
    assert read.original_size == 10
    assert read.original_timestamp == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


def test_a_record_that_is_not_a_dead_letter_is_refused_naming_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"orders\[0\]@3 is not a taskflow dead letter: it has no"):
        DeadLetterRecord.from_message(Message("orders", 0, 3, None, b"{}", ()))
    original = Message("orders", 0, 3, None, b"{}")
    ours = dead_letter_headers(original, "shop", Reject("no"), 1, "rejected")
    forged = tuple((n, b"two" if n == "taskflow-attempts" else v) for n, v in ours)
    with pytest.raises(ValueError, match="its taskflow-attempts header is 'two', not a number"):
        DeadLetterRecord.from_message(original._replace(headers=forged))


async def test_a_dead_letter_the_broker_will_never_take_is_skipped_with_an_error_and_counted(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled: list[int] = []
    reader = InMemoryMetricReader()
    app = rejecting_app(handled, meter_provider=MeterProvider(metric_readers=[reader]))
    tries: list[str] = []

    async with TestClient(app, partitions=1) as client:
        publish = client.broker.publish

        async def unauthorised(topic: str, value: bytes, **options: Any) -> Any:
            if topic == "orders.DLQ":
                tries.append(topic)
                raise RecordRefused("publishing to 'orders.DLQ' failed: TopicAuthorizationFailed")
            return await publish(topic, value, **options)

        monkeypatch.setattr(client.broker, "publish", unauthorised)
        await client.publish("orders", b"bad order")
        for n in range(10):
            await client.publish("orders", b"%d" % n)
        await client.drain()
        assert client.committed("shop", "orders", 0) == 11
        data = reader.get_metrics_data()

    assert handled == list(range(1, 11))
    assert tries == ["orders.DLQ"]  # tried once: trying again cannot help
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert (
        "orders[0]@0 rejected after 1 attempt(s) (Reject: bad order); its dead letter can "
        "never be written to orders.DLQ (RecordRefused: publishing to 'orders.DLQ' failed: "
    ) in error.getMessage()
    assert data is not None
    [points] = [
        metric.data.data_points
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "taskflow.consumer.dead_letters"
    ]
    assert [(dict(p.attributes or {}), p.value) for p in points] == [  # type: ignore[attr-defined]
        (
            {
                "messaging.destination.name": "orders",
                "messaging.consumer.group.name": "shop",
                "error.type": "taskflow.exceptions.Reject",
                "taskflow.dead_letter.reason": "rejected",
                "taskflow.dead_letter.outcome": "dropped",
            },
            1,
        )
    ]


async def test_a_dead_letter_the_broker_refuses_as_too_large_is_sent_smaller_then_skipped(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    handled: list[int] = []
    sizes: list[int] = []

    async with TestClient(rejecting_app(handled), partitions=1) as client:
        publish = client.broker.publish

        async def small_broker(topic: str, value: bytes, **options: Any) -> Any:
            if topic == "orders.DLQ":  # a broker whose own limit is below the producer's
                sizes.append(len(value))
                raise RecordTooLarge("MessageSizeTooLargeError")
            return await publish(topic, value, **options)

        monkeypatch.setattr(client.broker, "publish", small_broker)
        await client.publish("orders", b"bad order", key="k-1", headers={"trace": "t-1"})
        await client.publish("orders", b"fine")
        await client.drain()
        assert client.committed("shop", "orders", 0) == 2

    assert handled == [1]
    assert sizes == [len(b"bad order"), 0, 0]  # whole, without the value, without all it can
    assert "its dead letter can never be written to orders.DLQ (RecordTooLarge: " in caplog.text
