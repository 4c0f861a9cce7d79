"""Batch consumers through TestClient: forming batches, ordering, retries, BatchError, rejects."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import pytest

from taskflow import App, Backoff, BatchError, ConfigurationError, Context, Message, Reject
from taskflow.brokers.memory import MemoryConsumer
from taskflow.codec import encode_key, encode_value
from taskflow.testing import TestClient

FAST_RETRY = Backoff(initial=0.01, maximum=0.05)


def ids(batch: Sequence[dict[str, int]]) -> list[int]:
    return [record["id"] for record in batch]


async def waiting(client: TestClient, topic: str, values: list[object]) -> None:
    """Publish `values` before the app starts, so its first fetch finds them all."""
    await client.broker.start()
    for number, value in enumerate(values):
        await client.broker.publish(topic, encode_value(value), key=encode_key(f"k{number}"))


def dead_letters(app: App, topic: str = "events.DLQ") -> list[Message]:
    dead: list[Message] = []

    @app.consume(topic, group="dead-letters")
    async def read_dead_letters(message: Message) -> None:
        dead.append(message)

    return dead


# -- forming batches -------------------------------------------------------------------------


async def test_records_come_in_full_batches_in_offset_order_and_are_committed() -> None:
    app = App("shop")
    batches: list[list[int]] = []

    @app.consume("events", batch=10, batch_wait=5)
    async def store(events: list[dict[str, int]], ctx: Context) -> None:
        batches.append(ids(events))

    client = TestClient(app, partitions=1)
    await waiting(client, "events", [{"id": i} for i in range(25)])
    async with client:
        await client.drain()
        assert client.committed("shop", "events", 0) == 25
    # the last 5 go at once: the partition is caught up, nothing more can join them
    assert batches == [list(range(10)), list(range(10, 20)), list(range(20, 25))]


async def test_a_batch_fills_across_fetches_while_its_partition_is_behind() -> None:
    app = App("shop")
    batches: list[int] = []

    @app.consume("events", batch=1200, batch_wait=5, max_buffered=2400)
    async def store(events: list[bytes]) -> None:
        batches.append(len(events))

    client = TestClient(app, partitions=1)
    await waiting(client, "events", [b"x"] * 1500)  # a fetch hands out 500 at most
    async with client:
        await client.drain()
    assert batches == [1200, 300]


async def test_a_partial_batch_goes_once_batch_wait_has_passed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(MemoryConsumer, "positions", lambda self: {})  # never known caught up
    app = App("shop")
    batches: list[list[int]] = []

    @app.consume("events", batch=100, batch_wait=0.05)
    async def store(events: list[dict[str, int]]) -> None:
        batches.append(ids(events))

    client = TestClient(app, partitions=1)
    await waiting(client, "events", [{"id": i} for i in range(3)])
    async with client:
        await client.drain()
    assert batches == [[0, 1, 2]]


async def test_records_of_a_caught_up_partition_go_at_once() -> None:
    app = App("shop")
    batches: list[list[int]] = []

    @app.consume("events", batch=100, batch_wait=30)
    async def store(events: list[dict[str, int]]) -> None:
        batches.append(ids(events))

    async with TestClient(app, partitions=1) as client:
        await client.publish("events", {"id": 0})
        await client.drain()
        await client.publish("events", {"id": 1})
        await client.drain()
    assert batches == [[0], [1]]


async def test_partition_ordering_keeps_each_batch_to_one_partition() -> None:
    app = App("shop")
    seen: list[list[Message]] = []

    @app.consume("events", batch=50, batch_wait=0.05)
    async def store(events: list[Message]) -> None:
        seen.append(events)

    async with TestClient(app, partitions=4) as client:
        for i in range(40):
            await client.publish("events", {"id": i}, key=f"k{i}")
        await client.drain()
    assert sum(map(len, seen)) == 40
    for batch in seen:
        assert len({m.partition for m in batch}) == 1
        offsets = [m.offset for m in batch]
        assert offsets == sorted(offsets)


async def test_none_ordering_mixes_partitions_and_runs_concurrency_batches_at_once() -> None:
    app = App("shop")
    seen: list[list[Message]] = []
    running, most = 0, 0

    @app.consume("events", batch=5, batch_wait=0.05, ordering="none", concurrency=2)
    async def store(events: list[Message]) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        seen.append(events)
        await asyncio.sleep(0.02)
        running -= 1

    client = TestClient(app, partitions=4)
    await waiting(client, "events", [{"id": i} for i in range(40)])
    async with client:
        await client.drain()
    assert sorted(m.value for batch in seen for m in batch) == sorted(
        b'{"id":%d}' % i for i in range(40)
    )
    assert any(len({m.partition for m in batch}) > 1 for batch in seen)
    assert most == 2


@dataclass
class Event:
    id: int


async def test_payload_types_of_single_handlers_work_as_elements() -> None:
    app = App("shop")
    got: list[object] = []

    @app.consume("events", batch=10, batch_wait=0.01)
    async def store(events: Sequence[Event]) -> None:
        got.extend(events)

    @app.consume("events", group="raw", batch=10, batch_wait=0.01)
    def store_raw(events: list[bytes]) -> None:  # a plain def runs in a thread
        got.extend(events)

    async with TestClient(app, partitions=1) as client:
        await client.publish("events", {"id": 7})
        await client.drain()
    assert sorted(map(repr, got)) == sorted([repr(Event(7)), repr(b'{"id":7}')])


# -- failures -------------------------------------------------------------------------------


async def test_a_failing_batch_is_retried_whole() -> None:
    app = App("shop")
    calls: list[list[int]] = []

    @app.consume("events", batch=10, batch_wait=0.05, retry=FAST_RETRY)
    async def store(events: list[dict[str, int]]) -> None:
        calls.append(ids(events))
        if len(calls) == 1:
            raise ConnectionError("database down")

    client = TestClient(app, partitions=1)
    await waiting(client, "events", [{"id": i} for i in range(4)])
    async with client:
        await client.drain()
        assert client.committed("shop", "events", 0) == 4
    assert calls == [[0, 1, 2, 3], [0, 1, 2, 3]]


async def test_a_batch_that_exhausts_max_attempts_is_dead_lettered_record_by_record() -> None:
    app = App("shop")
    dead = dead_letters(app)
    calls = 0

    @app.consume(
        "events",
        batch=10,
        batch_wait=0.05,
        retry=FAST_RETRY,
        max_attempts=2,
        dead_letter="events.DLQ",
    )
    async def store(events: list[dict[str, int]]) -> None:
        nonlocal calls
        calls += 1
        raise ConnectionError("database down")

    client = TestClient(app, partitions=1)
    await waiting(client, "events", [{"id": i} for i in range(3)])
    async with client:
        await client.drain()
        assert client.committed("shop", "events", 0) == 3
    assert calls == 2
    assert [m.value for m in dead] == [b'{"id":0}', b'{"id":1}', b'{"id":2}']
    assert {m.header("taskflow-reason") for m in dead} == {b"exhausted"}


async def test_batch_error_finishes_the_records_before_it_and_runs_the_rest_again() -> None:
    app = App("shop")
    calls: list[list[int]] = []

    @app.consume("events", batch=10, batch_wait=0.05, retry=FAST_RETRY)
    async def store(events: list[dict[str, int]]) -> None:
        calls.append(ids(events))
        if len(calls) == 1:
            raise BatchError(3, ConnectionError("row 3 conflicted"))

    client = TestClient(app, partitions=1)
    await waiting(client, "events", [{"id": i} for i in range(6)])
    async with client:
        await client.drain()
        assert client.committed("shop", "events", 0) == 6
    # record 3 alone (the single-record policy retries it), then the rest as a batch
    assert calls == [[0, 1, 2, 3, 4, 5], [3], [4, 5]]


async def test_batch_error_with_a_reject_dead_letters_that_record_only() -> None:
    app = App("shop")
    dead = dead_letters(app)
    calls: list[list[int]] = []

    @app.consume("events", batch=10, batch_wait=0.05, dead_letter="events.DLQ")
    async def store(events: list[dict[str, int]]) -> None:
        calls.append(ids(events))
        for index, event in enumerate(events):
            if event["id"] == 1:
                raise BatchError(index, Reject("bad row"))

    client = TestClient(app, partitions=1)
    await waiting(client, "events", [{"id": i} for i in range(4)])
    async with client:
        await client.drain()
        assert client.committed("shop", "events", 0) == 4
    assert calls == [[0, 1, 2, 3], [2, 3]]
    assert [m.value for m in dead] == [b'{"id":1}']
    assert dead[0].header("taskflow-reason") == b"rejected"


async def test_a_record_that_does_not_decode_is_rejected_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App("shop")
    dead = dead_letters(app)
    calls: list[list[int]] = []

    @app.consume("events", batch=10, batch_wait=0.05, dead_letter="events.DLQ")
    async def store(events: list[dict[str, int]]) -> None:
        calls.append(ids(events))

    client = TestClient(app, partitions=1)
    await waiting(client, "events", [{"id": 0}, b"not json", {"id": 2}])
    async with client:
        await client.drain()
        assert client.committed("shop", "events", 0) == 3
    assert calls == [[0, 2]]
    assert [m.value for m in dead] == [b"not json"]


async def test_a_reject_for_the_whole_batch_skips_every_record_without_dead_letters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App("shop")
    calls = 0

    @app.consume("events", batch=10, batch_wait=0.05)
    async def store(events: list[dict[str, int]]) -> None:
        nonlocal calls
        calls += 1
        raise Reject("the whole file is bad")

    client = TestClient(app, partitions=1)
    await waiting(client, "events", [{"id": i} for i in range(3)])
    async with client:
        await client.drain()
        assert client.committed("shop", "events", 0) == 3
    assert calls == 1
    assert caplog.text.count("rejected and skipped") == 3


async def test_shutdown_lets_a_running_batch_finish_and_drops_what_waits() -> None:
    app = App("shop")
    started = asyncio.Event()
    handled: list[int] = []

    @app.consume("events", batch=2, batch_wait=0)
    async def store(events: list[dict[str, int]]) -> None:
        started.set()
        await asyncio.sleep(0.1)
        handled.extend(ids(events))

    client = TestClient(app, partitions=1)
    await waiting(client, "events", [{"id": i} for i in range(6)])
    async with client:
        await started.wait()
    assert client.committed("shop", "events", 0) == len(handled)
    assert handled == list(range(len(handled)))
    assert 2 <= len(handled) < 6


# -- validation -----------------------------------------------------------------------------


def test_a_batch_handler_must_take_a_list() -> None:
    app = App("shop")

    async def store(event: dict[str, int]) -> None: ...

    with pytest.raises(ConfigurationError, match=r"list\[T\]"):
        app.add_consumer(store, "events", batch=10)


def test_batch_is_refused_in_key_ordering() -> None:
    app = App("shop")

    async def store(events: list[dict[str, int]]) -> None: ...

    with pytest.raises(ConfigurationError, match="ordering='partition'"):
        app.add_consumer(store, "events", batch=10, ordering="key")


def test_batch_wait_needs_batch_and_batch_fits_max_buffered() -> None:
    app = App("shop")

    async def store(events: list[dict[str, int]]) -> None: ...

    with pytest.raises(ConfigurationError, match="batch_wait= needs batch="):
        app.add_consumer(store, "events", batch_wait=1)
    with pytest.raises(ConfigurationError, match="max_buffered=5000"):
        app.add_consumer(store, "events", batch=5000)
    with pytest.raises(ConfigurationError, match="batch must be a whole number"):
        app.add_consumer(store, "events", batch=0)


async def test_without_batch_a_list_is_a_json_array_payload() -> None:
    app = App("shop")
    got: list[list[int]] = []

    @app.consume("events")
    async def store(values: list[int]) -> None:
        got.append(values)

    async with TestClient(app, partitions=1) as client:
        await client.publish("events", [1, 2, 3])
        await client.drain()
    assert got == [[1, 2, 3]]


async def test_records_before_a_batch_error_are_committed_while_the_failed_one_retries() -> None:
    app = App("shop")
    retried = asyncio.Event()
    calls: list[list[int]] = []

    @app.consume("events", batch=10, batch_wait=0.05, retry=FAST_RETRY)
    async def store(events: list[dict[str, int]]) -> None:
        calls.append(ids(events))
        if 2 in ids(events):
            if len(calls) > 3:
                retried.set()
            raise BatchError(ids(events).index(2), ConnectionError("row 2 conflicted"))

    client = TestClient(app, partitions=1, shutdown_timeout=1)
    await waiting(client, "events", [{"id": i} for i in range(5)])
    async with client:
        await retried.wait()
        assert client.committed("shop", "events", 0) == 2  # 0 and 1; 2 is still failing
    assert client.committed("shop", "events", 0) == 2
    assert calls[0] == [0, 1, 2, 3, 4]
    assert all(batch == [2] for batch in calls[1:])  # the rest waits behind it, in order


async def test_two_replicas_of_a_none_ordered_batch_consumer_share_the_partitions() -> None:
    handled: dict[str, list[int]] = {"left": [], "right": []}

    def replica(side: str) -> App:
        app = App("shop")

        @app.consume("events", batch=8, ordering="none", concurrency=2)
        async def store(events: list[dict[str, int]]) -> None:
            await asyncio.sleep(0.001)  # the other member joins while batches run
            handled[side].extend(ids(events))

        return app

    left, right = TestClient(replica("left")), TestClient(replica("right"))
    right.broker = left.broker  # two replicas of one app, on one broker
    async with left, right:
        for i in range(200):
            await left.publish("events", {"id": i}, key=f"k{i}")
        await left.drain()
        await right.drain()
        for partition in range(4):
            assert left.committed("shop", "events", partition) is not None
    assert handled["left"]
    assert handled["right"]
    assert sorted(handled["left"] + handled["right"]) == list(range(200))  # each exactly once


# -- tombstones ------------------------------------------------------------------------------


async def test_a_tombstone_is_left_out_of_a_batch_of_payloads_that_cannot_be_none() -> None:
    app = App("shop")
    batches: list[list[int]] = []

    @app.consume("events", batch=10)
    async def store(events: list[dict[str, int]]) -> None:
        batches.append(ids(events))

    client = TestClient(app, partitions=1)
    await waiting(client, "events", [{"id": 0}, None, {"id": 2}])
    async with client:
        await client.drain()
        assert client.committed("shop", "events", 0) == 3
    assert batches == [[0, 2]]


async def test_a_tombstone_reaches_a_batch_of_optional_payloads_as_none() -> None:
    app = App("shop")
    batches: list[list[dict[str, int] | None]] = []

    @app.consume("events", batch=10)
    async def store(events: list[dict[str, int] | None]) -> None:
        batches.append(list(events))

    client = TestClient(app, partitions=1)
    await waiting(client, "events", [{"id": 0}, None])
    async with client:
        await client.drain()
        assert client.committed("shop", "events", 0) == 2
    assert batches == [[{"id": 0}, None]]
