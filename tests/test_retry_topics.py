"""Retry topics on the memory broker, with a ManualClock: a failure does not hold its partition;
the record waits out each stage's delay on its retry topic, then goes to the dead-letter topic."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from redis.asyncio import Redis

from taskflow import (
    App,
    Backoff,
    ConfigurationError,
    Context,
    Defer,
    MsgpackCodec,
    Reject,
    Retry,
)
from taskflow.brokers.memory import MemoryBroker
from taskflow.exceptions import PublishError
from taskflow.logfmt import JsonFormatter
from taskflow.message import Headers, Message, TopicPartition
from taskflow.retry_topics import LATEST_MS
from taskflow.telemetry.status import ConsumerStatus
from taskflow.testing import ManualClock, TestClient
from taskflow.workers.due import CLOCK_SKEW, DueGate, epoch_ms
from tests._redis import REDIS_URL

pytestmark = pytest.mark.usefixtures("caplog")


def _app(clock: ManualClock, fails: set[int], **options: Any) -> tuple[App, list[tuple[int, int]]]:
    """An app whose handler records (id, attempt) and fails ids in `fails`."""
    app = App("svc", clock=clock)
    runs: list[tuple[int, int]] = []

    @app.consume(
        "orders",
        group="billing",
        dead_letter="orders.DLQ",
        retry_topics=options.pop("retry_topics", [10, 60]),
        **options,
    )
    async def on_order(order: dict[str, int], ctx: Context) -> None:
        runs.append((order["id"], ctx.attempt))
        if order["id"] in fails:
            raise ConnectionError(f"order {order['id']} failed")

    return app, runs


async def test_a_failure_goes_through_each_stage_after_its_delay_then_to_the_dead_letters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    app, runs = _app(clock, fails={1})
    async with TestClient(app, partitions=1) as client:
        for order in range(1, 4):
            await client.publish("orders", {"id": order})
        await client.drain()
        # The partition was not held: orders 2 and 3 ran after order 1 failed.
        assert runs == [(1, 1), (2, 1), (3, 1)]
        (staged,) = client.published("orders.retry.10s")
        assert staged.headers["taskflow-original-topic"] == "orders"
        assert staged.headers["taskflow-original-offset"] == "0"
        assert staged.headers["taskflow-consumer-group"] == "billing"
        assert staged.headers["taskflow-attempts"] == "1"
        assert staged.headers["taskflow-exception-type"] == "builtins.ConnectionError"
        due = clock.now() + timedelta(seconds=10)
        assert int(staged.headers["taskflow-due"]) == round(due.timestamp() * 1000)
        assert client.committed("billing", "orders", 0) == 3

        await clock.advance(9.9)
        await client.drain()
        assert runs[3:] == []  # not before its delay

        await clock.advance(0.1)
        await client.drain()
        assert runs[3:] == [(1, 2)]
        (second,) = client.published("orders.retry.60s")
        assert second.headers["taskflow-attempts"] == "2"
        assert second.headers["taskflow-original-offset"] == "0"  # still the original

        await clock.advance(59)
        await client.drain()
        assert runs[4:] == []
        await clock.advance(1)
        await client.drain()
        assert runs[4:] == [(1, 3)]
    (letter,) = client.dead_letters("orders.DLQ")
    assert (letter.reason, letter.attempts) == ("exhausted", 3)
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        "orders",
        0,
        0,
    )
    assert letter.group == "billing"
    assert letter.json() == {"id": 1}
    assert not any(name.startswith("taskflow-due") for name, _ in letter.raw_headers)
    staged_lines = [r.getMessage() for r in caplog.records if "sent to orders.retry" in r.message]
    assert len(staged_lines) == 2
    assert all(r.levelno == logging.WARNING for r in caplog.records if "sent to" in r.message)
    assert "due 2026-01-01T00:00:10.000+00:00" in staged_lines[0]


@pytest.mark.parametrize("ordering", ["key", "none"])
async def test_out_of_order_only_the_failed_record_leaves_its_place_for_its_stage(
    ordering: str,
) -> None:
    clock = ManualClock()
    app, runs = _app(clock, fails={1}, retry_topics=[10], ordering=ordering, concurrency=4)
    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 1}, key="a")
        await client.publish("orders", {"id": 2}, key="a")  # behind the failure, same key
        await client.publish("orders", {"id": 3}, key="b")
        await client.drain()
        # Nothing held: the records behind the failed one ran, its own key's too.
        assert sorted(runs) == [(1, 1), (2, 1), (3, 1)]
        (staged,) = client.published("orders.retry.10s")
        assert (staged.json(), staged.key) == ({"id": 1}, b"a")
        assert client.committed("billing", "orders", 0) == 3

        await clock.advance(9.9)
        await client.drain()
        assert len(runs) == 3  # not before its delay
        await clock.advance(0.1)
        await client.drain()
        assert runs[3:] == [(1, 2)]
        assert client.committed("billing.retry", "orders.retry.10s", 0) == 1
    (letter,) = client.dead_letters("orders.DLQ")
    assert (letter.reason, letter.attempts, letter.original_offset) == ("exhausted", 2, 0)


@pytest.mark.parametrize("ordering", ["key", "none"])
async def test_out_of_order_nothing_is_committed_past_a_record_still_running(
    ordering: str,
) -> None:
    clock = ManualClock()
    app = App("svc", clock=clock)
    runs: list[tuple[int, int]] = []
    finished: set[tuple[int, int]] = set()  # handled: the worker marks it finished at once
    changed = asyncio.Event()
    release = asyncio.Event()

    @app.consume(
        "orders",
        group="billing",
        dead_letter="orders.DLQ",
        retry_topics=[10],
        ordering=ordering,
        concurrency=4,
    )
    async def on_order(order: dict[str, int], ctx: Context) -> None:
        runs.append((order["id"], ctx.attempt))
        if order["id"] == 2:
            await release.wait()  # slow, on each attempt
        if order["id"] in (2, 5) and ctx.attempt == 1:
            raise ConnectionError("down")
        finished.add((order["id"], ctx.attempt))
        changed.set()

    async def settled(worker: str, done: set[tuple[int, int]]) -> None:
        """Wait until `done` were handled, then commit what `worker` finished."""
        async with asyncio.timeout(10):
            while not done <= finished:
                changed.clear()
                await changed.wait()
        await client.runtime.worker(worker).commit()  # type: ignore[attr-defined]

    async with TestClient(app, partitions=1) as client:
        for order in range(1, 5):
            await client.publish("orders", {"id": order}, key="a" if order < 3 else "b")
        await settled("on_order", {(1, 1), (3, 1), (4, 1)})
        # Orders 1, 3 and 4 are done; order 2 (offset 1) still runs: the commit stays at it.
        assert client.committed("billing", "orders", 0) == 1
        release.set()
        await client.drain()
        assert client.committed("billing", "orders", 0) == 4
        assert len(client.published("orders.retry.10s")) == 1

        # On its stage, too, a record still running holds the commit below it.
        release.clear()
        await client.publish("orders", {"id": 5}, key="c")
        await client.drain()
        await clock.advance(10)
        await settled("on_order.retry", {(5, 2)})
        assert (2, 2) in runs  # running, at offset 0 of the stage
        assert client.committed("billing.retry", "orders.retry.10s", 0) == 0
        release.set()
        await client.drain()
        assert client.committed("billing.retry", "orders.retry.10s", 0) == 2
    assert sorted(runs) == [(1, 1), (2, 1), (2, 2), (3, 1), (4, 1), (5, 1), (5, 2)]
    assert client.published("orders.DLQ") == []


# --8<-- [start:stages]
async def test_a_record_that_succeeds_on_a_stage_is_done() -> None:
    clock = ManualClock()
    app = App("svc", clock=clock)
    runs: list[int] = []

    @app.consume("orders", dead_letter="orders.DLQ", retry_topics=[0.5])
    async def on_order(order: dict[str, int], ctx: Context) -> None:
        runs.append(ctx.attempt)
        if ctx.attempt == 1:
            raise Retry("not yet")

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 1})
        await client.drain()
        assert runs == [1]  # the record waits on orders.retry.500ms
        assert len(client.published("orders.retry.500ms")) == 1
        await clock.advance(0.5)
        await client.drain()
        assert runs == [1, 2]
        assert client.committed("svc.retry", "orders.retry.500ms", 0) == 1
    assert client.published("orders.DLQ") == []


# --8<-- [end:stages]


async def test_every_line_about_a_record_on_a_stage_names_its_original_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    app, _ = _app(clock, fails={1}, retry_topics=[10])
    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 1})
        await client.drain()
        await clock.advance(10)
        await client.drain()
    lines = [r for r in caplog.records if r.getMessage().startswith(("✗", "☠"))]
    assert [r.getMessage().split(" attempt")[0].split(" exhausted")[0] for r in lines] == [
        "✗ orders[0]@0",
        "☠ orders.retry.10s[0]@0 (orders[0]@0)",
    ]
    assert all("orders[0]@0" in r.getMessage() for r in lines)  # one search finds them all
    entry = json.loads(JsonFormatter().format(lines[1]))
    assert (entry["topic"], entry["partition"], entry["offset"]) == ("orders.retry.10s", 0, 0)
    assert (entry["original_topic"], entry["original_partition"], entry["original_offset"]) == (
        "orders",
        0,
        0,
    )
    assert "original_topic" not in json.loads(JsonFormatter().format(lines[0]))


async def test_a_reject_on_a_stage_goes_straight_to_the_dead_letters() -> None:
    clock = ManualClock()
    app = App("svc", clock=clock)

    @app.consume("orders", dead_letter="orders.DLQ", retry_topics=[1, 2, 3])
    async def on_order(order: dict[str, int], ctx: Context) -> None:
        if ctx.attempt == 1:
            raise ConnectionError("down")
        raise Reject("bad order")

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 7})
        await client.drain()
        await clock.advance(1)
        await client.drain()
    (letter,) = client.dead_letters("orders.DLQ")
    assert (letter.reason, letter.attempts, letter.original_topic) == ("rejected", 2, "orders")
    assert client.published("orders.retry.2s") == []


async def test_a_stage_runs_only_the_records_its_own_group_failed() -> None:
    clock = ManualClock()
    app = App("svc", clock=clock)
    seen: dict[str, list[int]] = {"a": [], "b": []}

    @app.consume("orders", group="a", dead_letter="a.DLQ", retry_topics=[5])
    async def first(order: dict[str, int], ctx: Context) -> None:
        seen["a"].append(ctx.attempt)
        if ctx.attempt == 1:
            raise ConnectionError("a fails once")

    @app.consume("orders", group="b", dead_letter="b.DLQ", retry_topics=[5])
    async def second(order: dict[str, int], ctx: Context) -> None:
        seen["b"].append(ctx.attempt)

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 1})
        await client.drain()
        await clock.advance(5)
        await client.drain()
        assert client.committed("b.retry", "orders.retry.5s", 0) == 1  # skipped, committed
    assert seen == {"a": [1, 2], "b": [1]}


async def test_a_defer_waits_in_place_and_goes_to_no_retry_topic() -> None:
    clock = ManualClock()
    app = App("svc", clock=clock)
    calls: list[tuple[int, int]] = []

    @app.consume("orders", dead_letter="orders.DLQ", retry_topics=[10])
    async def on_order(order: dict[str, int], ctx: Context) -> None:
        calls.append((order["id"], ctx.attempt))
        if len(calls) == 1:
            raise Defer("not now", delay=0.01)

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 1})
        await client.publish("orders", {"id": 2})
        await client.drain()
    assert calls == [(1, 1), (1, 1), (2, 1)]  # in order, the same attempt
    assert client.published("orders.retry.10s") == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retry_topics": [10]}, "retry_topics needs dead_letter="),
        ({"retry_topics": [10], "dead_letter": "d", "max_attempts": 3}, "max_attempts do not go"),
        ({"retry_topics": [10, 10.0], "dead_letter": "d"}, "lists a delay twice"),
        ({"retry_topics": [10, timedelta(seconds=10)], "dead_letter": "d"}, "lists a delay twice"),
        ({"retry_topics": [0], "dead_letter": "d"}, "positive"),
        ({"retry_topics": [-1], "dead_letter": "d"}, "positive"),
        ({"retry_topics": [0.0005], "dead_letter": "d"}, "whole milliseconds"),
        ({"retry_topics": ["10"], "dead_letter": "d"}, "seconds"),
        ({"retry_topics": [True], "dead_letter": "d"}, "seconds"),
        ({"retry_topics": 10, "dead_letter": "d"}, "a list of delays"),
        ({"retry_topics": [], "dead_letter": "d"}, "at least one delay"),
        ({"retry_topics": [10], "dead_letter": "orders.retry.10s"}, "dead-letter topic"),
        ({"retry_topics": [10], "dead_letter": "d", "batch": 10}, "batch="),
    ],
)
def test_bad_retry_topics_are_refused(options: dict[str, Any], message: str) -> None:
    app = App("svc")

    async def handler(order: dict[str, int]) -> None: ...

    with pytest.raises(ConfigurationError, match=message):
        app.add_consumer(handler, "orders", **options)


def test_a_retry_topic_that_is_also_consumed_is_refused() -> None:
    app = App("svc")

    async def handler(order: dict[str, int]) -> None: ...

    with pytest.raises(ConfigurationError, match=r"'orders\.retry\.1s' is also consumed here"):
        app.add_consumer(handler, "orders", "orders.retry.1s", dead_letter="d", retry_topics=[1])


def test_the_retry_stage_takes_a_worker_name() -> None:
    app = App("svc")

    async def handler(order: dict[str, int]) -> None: ...

    app.add_consumer(handler, "orders", name="h.retry")
    with pytest.raises(ConfigurationError, match=r"'h\.retry' is already registered"):
        app.add_consumer(handler, "invoices", name="h", dead_letter="d", retry_topics=[1])


def test_stage_topics_are_named_by_topic_and_delay() -> None:
    app = App("svc")

    async def handler(order: dict[str, int]) -> None: ...

    spec = app.add_consumer(
        handler,
        "orders",
        "refunds",
        dead_letter="d",
        retry_topics=[timedelta(milliseconds=250), 1.5, 60],
    )
    assert spec.stage_topics == (
        "orders.retry.250ms",
        "refunds.retry.250ms",
        "orders.retry.1500ms",
        "refunds.retry.1500ms",
        "orders.retry.60s",
        "refunds.retry.60s",
    )
    assert spec.max_attempts is None


# -- idempotency: every stage of a record shares the original's identity ---------------------


async def _redeliver(client: TestClient, topic: str) -> None:
    """Write the first record of `topic` again, as a redelivery of it would be seen."""
    (record, *_) = client.broker.topic(topic).written
    await client.broker.publish(topic, record.value, key=record.key, headers=record.headers)


@pytest.mark.redis
async def test_a_retried_record_known_by_its_offset_runs_once_when_its_stage_record_comes_again(
    redis: Redis,
) -> None:
    clock = ManualClock()
    app = App("svc", clock=clock, redis_url=REDIS_URL, idempotent=True)
    runs: list[tuple[int, int]] = []

    @app.consume("orders", group="billing", dead_letter="orders.DLQ", retry_topics=[10])
    async def on_order(order: dict[str, int], ctx: Context) -> None:
        runs.append((order["id"], ctx.attempt))
        if ctx.attempt == 1:
            raise ConnectionError("down")

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 1})
        await client.drain()
        await clock.advance(10)
        await client.drain()
        assert runs == [(1, 1), (1, 2)]
        # Its done mark is the original's (group, topic, partition, offset), not the retry's.
        assert await redis.exists("taskflow:{billing}:idem:orders:0:0")
        await _redeliver(client, "orders.retry.10s")
        await client.drain()
        await clock.advance(10)
        await client.drain()
        assert client.committed("billing.retry", "orders.retry.10s", 0) == 2
    assert runs == [(1, 1), (1, 2)]


@pytest.mark.redis
async def test_a_retried_record_whose_key_was_done_meanwhile_is_not_run_again(
    redis: Redis,
) -> None:
    clock = ManualClock()
    app = App("svc", clock=clock, redis_url=REDIS_URL, idempotent=True)
    runs: list[tuple[int, int]] = []

    @app.consume("orders", group="billing", dead_letter="orders.DLQ", retry_topics=[10])
    async def on_order(order: dict[str, int], ctx: Context) -> None:
        runs.append((order["id"], ctx.attempt))
        if order["id"] == 1:
            raise ConnectionError("down")

    async with TestClient(app, partitions=1) as client:
        # The same order twice, by its idempotency-key: the first copy fails, the second one
        # succeeds, so when the first comes back from its retry topic it is done already.
        await client.publish("orders", {"id": 1}, headers={"idempotency-key": "order-1"})
        await client.publish("orders", {"id": 2}, headers={"idempotency-key": "order-1"})
        await client.drain()
        assert len(client.published("orders.retry.10s")) == 1
        await clock.advance(10)
        await client.drain()
        assert client.committed("billing.retry", "orders.retry.10s", 0) == 1
    assert runs == [(1, 1), (2, 1)]
    assert client.published("orders.DLQ") == []


async def test_the_retry_stage_is_a_worker_of_its_own_with_its_status_and_counts() -> None:
    clock = ManualClock()
    app, _ = _app(clock, fails={1})
    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 1})
        await client.drain()
        main = client.runtime.worker("on_order").status()
        stage = client.runtime.worker("on_order.retry").status()
        assert isinstance(main, ConsumerStatus)
        assert isinstance(stage, ConsumerStatus)
        assert (stage.group, stage.topics) == (
            "billing.retry",
            ("orders.retry.10s", "orders.retry.60s"),
        )
        # The stage holds its record, not due yet, with its partition paused.
        (held,) = [p for p in stage.partitions if p.tp.topic == "orders.retry.10s"]
        assert held.paused
        (sent,) = main.policy_counts
        assert (sent.action, sent.topic, sent.stage, sent.count) == ("retry_topic", "orders", 1, 1)
        shown = main.as_json()
        assert shown["retry_topics"] == ["orders.retry.10s", "orders.retry.60s"]
        assert shown["dead_letter"] == "orders.DLQ"
        await clock.advance(10)
        await client.drain()
        stage = client.runtime.worker("on_order.retry").status()
        assert isinstance(stage, ConsumerStatus)
        (sent,) = stage.policy_counts
        assert (sent.action, sent.topic, sent.stage) == ("retry_topic", "orders.retry.10s", 2)
        describe = client.runtime.worker("on_order").describe()  # type: ignore[attr-defined]
        assert describe == (
            "consumes orders as group billing, retrying through orders.retry.10s, "
            "orders.retry.60s, dead letters to orders.DLQ"
        )


async def test_the_lag_of_a_stage_partition_counts_the_records_it_holds() -> None:
    clock = ManualClock()
    app, runs = _app(clock, fails={1, 2}, retry_topics=[10])
    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 1})
        await client.publish("orders", {"id": 2})
        await client.drain()
        stage = client.runtime.worker("on_order.retry").status()
        assert isinstance(stage, ConsumerStatus)
        (held,) = stage.partitions
        assert (held.paused, held.lag, stage.lag) == (True, 2, 2)  # both wait for their due time
        await clock.advance(10)
        await client.drain()
        stage = client.runtime.worker("on_order.retry").status()
        assert isinstance(stage, ConsumerStatus)
        (done,) = stage.partitions
        assert (done.paused, done.lag) == (False, 0)
    assert runs == [(1, 1), (2, 1), (1, 2), (2, 2)]


async def test_a_record_its_retry_topic_will_never_take_is_dead_lettered_as_unretryable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    app, runs = _app(clock, fails={1})
    client = TestClient(app)
    # The original fits; its copy, with taskflow's headers, does not.
    client.broker = MemoryBroker(1, max_request_size=1500)
    async with client:
        await client.publish("orders", {"id": 1, "pad": "x" * 1300})
        await client.drain()
        assert client.committed("billing", "orders", 0) == 1
    assert runs == [(1, 1)]
    assert client.published("orders.retry.10s") == []
    (letter,) = client.dead_letters("orders.DLQ")
    assert (letter.reason, letter.attempts, letter.original_offset) == ("unretryable", 1, 0)
    assert letter.exception_type == "builtins.ConnectionError"
    assert letter.value_omitted is not None  # the dead letter is too large whole as well
    assert "cannot go to retry topic orders.retry.10s (RecordTooLarge" in caplog.text


class StageOutage(MemoryBroker):
    """A memory broker that cannot take the first `failures` records for a retry topic."""

    def __init__(self, failures: int) -> None:
        super().__init__(1)
        self.failures = failures
        self.committed_at_failure: list[int | None] = []

    async def publish(
        self, topic: str, value: bytes | None, *, key: bytes | None = None, headers: Headers = ()
    ) -> tuple[TopicPartition, int]:
        if ".retry." in topic and self.failures:
            self.failures -= 1
            self.committed_at_failure.append(self.committed("billing", TopicPartition("orders", 0)))
            raise PublishError(f"publishing to {topic!r} failed: the leader moved")
        return await super().publish(topic, value, key=key, headers=headers)


async def test_a_copy_the_broker_may_yet_take_is_sent_again_and_committed_only_once_taken(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    app, _ = _app(clock, fails={1}, retry=Backoff(initial=0.01, maximum=0.02))
    client = TestClient(app)
    client.broker = broker = StageOutage(failures=2)
    async with client:
        await client.publish("orders", {"id": 1})
        await client.drain()
        assert client.committed("billing", "orders", 0) == 1
    assert broker.committed_at_failure == [None, None]  # not committed while it was not taken
    assert len(client.published("orders.retry.10s")) == 1
    assert caplog.text.count("sending orders[0]@0 to retry topic orders.retry.10s failed") == 2


async def test_a_waiting_record_keeps_its_due_time_across_a_restart() -> None:
    clock = ManualClock()
    app, runs = _app(clock, fails={1})
    first = TestClient(app, partitions=1)
    async with first:
        await first.publish("orders", {"id": 1})
        await first.drain()
        await clock.advance(6)
    # Stopped with the record held on its stage: nothing of it committed, nothing run.
    assert first.committed("billing.retry", "orders.retry.10s", 0) is None
    assert runs == [(1, 1)]

    again = TestClient(app, partitions=1)
    again.broker = first.broker  # the same topics and offsets, a new process
    async with again:
        await again.drain()
        await clock.advance(3.9)
        await again.drain()
        assert runs == [(1, 1)]  # 9.9 s after it failed: not yet
        await clock.advance(0.1)
        await again.drain()
        assert runs == [(1, 1), (1, 2)]


def _stage_headers(due: str) -> dict[str, str]:
    """The headers taskflow gives a retry record of orders[0]@0 that group svc failed once, with
    `due` as its due time."""
    return {
        "taskflow-original-topic": "orders",
        "taskflow-original-partition": "0",
        "taskflow-original-offset": "0",
        "taskflow-consumer-group": "svc",
        "taskflow-attempts": "1",
        "taskflow-due": due,
    }


@pytest.mark.parametrize("due", ["soon", str(10**20)])
async def test_a_due_time_that_is_no_time_counts_from_the_records_timestamp(
    due: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock(datetime.now(UTC))  # the memory broker stamps records by the wall clock
    app = App("svc", clock=clock)
    runs: list[tuple[int, int]] = []

    @app.consume("orders", dead_letter="orders.DLQ", retry_topics=[10])
    async def on_order(order: dict[str, int], ctx: Context) -> None:
        runs.append((order["id"], ctx.attempt))

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders.retry.10s", {"id": 1}, headers=_stage_headers(due))
        await client.publish("orders.retry.10s", {"id": 2}, headers=_stage_headers("0"))
        await client.drain()
        assert runs == []  # held, with what follows it
        await clock.advance(11)  # its timestamp plus the stage's delay
        await client.drain()
        assert runs == [(1, 2), (2, 2)]
    assert "crashed" not in caplog.text


async def test_a_record_due_further_ahead_than_its_delay_is_held_and_said_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    app = App("svc", clock=clock)
    runs: list[int] = []

    @app.consume("orders", dead_letter="orders.DLQ", retry_topics=[10])
    async def on_order(order: dict[str, int], ctx: Context) -> None:
        runs.append(order["id"])

    far = datetime(2126, 1, 1, tzinfo=UTC)  # written by a clock a century ahead
    async with TestClient(app, partitions=1) as client:
        await client.publish(
            "orders.retry.10s", {"id": 1}, headers=_stage_headers(str(epoch_ms(far)))
        )
        await client.publish("orders.retry.10s", {"id": 2}, headers=_stage_headers("0"))
        await client.drain()
        await clock.advance(3600)
        await client.drain()
        stage = client.runtime.worker("on_order.retry").status()
        assert isinstance(stage, ConsumerStatus)
        (held,) = stage.partitions
    assert runs == []  # the head and what follows it wait: nothing runs before it is due
    assert (held.paused, held.lag) == (True, 2)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "orders.retry.10s[0]@0 (orders[0]@0) is due 2126-01-01T00:00:00+00:00, further ahead "
        "than its stage's 10s delay: a clock ahead of this replica's wrote it, or its "
        "taskflow-due header was changed; orders.retry.10s[0] waits for it"
    ]


def test_a_record_due_within_its_delay_and_the_clock_skew_is_not_called_too_far() -> None:
    now = epoch_ms(datetime(2026, 1, 1, tzinfo=UTC))
    gate = DueGate(10, "svc")

    def record(offset: int, ahead: float) -> Message:
        due = str(now + round(ahead * 1000)).encode()
        headers = (("taskflow-consumer-group", b"svc"), ("taskflow-due", due))
        return Message("orders.retry.10s", 0, offset, None, b"{}", headers)

    gate.admit([record(0, 10 + CLOCK_SKEW)], now)  # a clock up to CLOCK_SKEW ahead wrote it
    assert gate.too_far_ahead(now) is None
    gate.held.clear()
    gate.admit([record(1, 10 + CLOCK_SKEW + 1)], now)
    assert gate.too_far_ahead(now) is not None
    assert gate.too_far_ahead(now) is None  # said once


def test_a_record_stamped_past_the_year_9999_waits_for_a_moment_a_clock_can_show() -> None:
    ours = (("taskflow-consumer-group", b"svc"),)  # no due time: its timestamp plus the delay
    record = Message("orders.retry.10s", 0, 0, None, b"{}", ours, timestamp_ms=10**20)
    gate = DueGate(10, "svc")
    assert list(gate.admit([record], epoch_ms(datetime.now(UTC)))) == []  # held
    assert gate.head_due is not None
    assert gate.head_due.year == 9999


async def test_a_delay_reaching_past_the_year_9999_sends_one_copy_due_at_its_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    app, runs = _app(clock, fails={1}, retry_topics=[300e9])  # about 9,500 years
    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 1})
        await client.drain()
        assert client.committed("billing", "orders", 0) == 1
    (staged,) = client.published("orders.retry.300000000000s")
    assert staged.headers["taskflow-due"] == str(LATEST_MS)
    assert "sent to orders.retry.300000000000s, due 9999-12-31T23:59:59." in caplog.text
    assert "crashed" not in caplog.text
    assert runs == [(1, 1)]


class Line(msgspec.Struct):
    sku: str
    quantity: int


async def test_retry_copies_and_the_dead_letter_keep_the_originals_content_type() -> None:
    clock = ManualClock()
    app = App("svc", clock=clock)  # JSON: only the header says the record is MessagePack
    runs: list[tuple[Line, int]] = []

    @app.consume("lines", group="stock", dead_letter="lines.DLQ", retry_topics=[10])
    async def on_line(line: Line, ctx: Context) -> None:
        runs.append((line, ctx.attempt))
        raise ConnectionError("stock service down")

    async with TestClient(app, partitions=1) as client:
        await client.publish("lines", Line("a", 2), codec=MsgpackCodec())
        await client.drain()
        await clock.advance(10)
        await client.drain()
        (staged,) = client.published("lines.retry.10s")
    (letter,) = client.dead_letters("lines.DLQ")

    assert runs == [(Line("a", 2), 1), (Line("a", 2), 2)]  # the stage read it as MessagePack
    assert staged.headers["content-type"] == "application/msgpack"
    assert ("content-type", b"application/msgpack") in letter.raw_headers
    assert letter.value == MsgpackCodec().encode(Line("a", 2))
