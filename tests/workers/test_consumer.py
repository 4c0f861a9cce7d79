"""The consumer worker through TestClient: ordering, retries, dead letters, flow, shutdown."""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import re
import threading
import time
from collections import defaultdict

import pytest

from taskflow import App, Backoff, Context, Defer, Message, Reject, TopicPartition
from taskflow.loopwatch import LoopWatch
from taskflow.testing import TestClient
from taskflow.workers import ConsumerWorker

FAST_RETRY = Backoff(initial=0.01, maximum=0.05)


def consumer_worker(client: TestClient, name: str) -> ConsumerWorker:
    found = client.runtime.worker(name)
    assert isinstance(found, ConsumerWorker)
    return found


def headers_of(message: Message) -> dict[str, str]:
    return {name: value.decode() for name, value in message.headers}


async def settle() -> None:
    """Give every ready task its turns (to show that something did *not* happen)."""
    for _ in range(20):
        await asyncio.sleep(0)


class InFlight:
    """Counts handlers running at once."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0

    def __enter__(self) -> None:
        self.now += 1
        self.most = max(self.most, self.now)

    def __exit__(self, *exc: object) -> None:
        self.now -= 1


# -- handling and ordering ------------------------------------------------------------------


async def test_messages_are_handled_and_committed() -> None:
    app = App("shop")
    handled: list[int] = []

    @app.consume("orders")
    async def on_order(order: dict[str, int]) -> None:
        handled.append(order["id"])

    async with TestClient(app) as client:
        for i in range(12):
            await client.publish("orders", {"id": i}, key=f"customer-{i % 5}")
        await client.drain()
        assert sorted(handled) == list(range(12))
        for partition in range(4):
            end = client.broker.end_offset(TopicPartition("orders", partition))
            assert client.committed("shop", "orders", partition) == (end or None)
    assert client.report is not None
    assert client.report.clean


async def test_partition_mode_handles_each_partition_in_offset_order() -> None:
    app = App("shop")
    seen: dict[int, list[int]] = defaultdict(list)
    running = InFlight()

    @app.consume("orders", retry=FAST_RETRY)
    async def on_order(message: Message) -> None:
        with running:
            await asyncio.sleep(random.uniform(0, 0.002))
            seen[message.partition].append(message.offset)

    async with TestClient(app) as client:
        for i in range(60):
            await client.publish("orders", str(i), key=f"k{i % 9}")
        await client.drain()
        for partition, offsets in seen.items():
            end = client.broker.end_offset(TopicPartition("orders", partition))
            assert offsets == list(range(end))
    assert sum(len(offsets) for offsets in seen.values()) == 60
    assert running.most > 1  # partitions ran side by side


async def test_key_mode_keeps_each_keys_order_while_keys_overlap() -> None:
    app = App("shop")
    seen: dict[str, list[int]] = defaultdict(list)
    running = InFlight()

    @app.consume("orders", ordering="key", concurrency=8)
    async def on_order(event: dict[str, int], ctx: Context) -> None:
        with running:
            await asyncio.sleep(random.uniform(0, 0.003))
            assert ctx.message is not None
            assert ctx.message.key is not None
            seen[ctx.message.key.decode()].append(event["seq"])

    async with TestClient(app, partitions=1) as client:  # every key shares one partition
        for seq in range(10):
            for customer in range(16):
                await client.publish("orders", {"seq": seq}, key=f"c{customer}")
        await client.drain()
        assert client.committed("shop", "orders", 0) == 160

    assert set(seen) == {f"c{customer}" for customer in range(16)}
    assert all(sequence == list(range(10)) for sequence in seen.values())
    assert 1 < running.most <= 8


async def test_none_mode_runs_up_to_concurrency_handlers_at_once() -> None:
    app = App("shop")
    running = InFlight()
    four_running = asyncio.Event()
    handled: list[int] = []

    @app.consume("orders", ordering="none", concurrency=4)
    async def on_order(order: dict[str, int]) -> None:
        with running:
            if running.now == 4:
                four_running.set()
            await four_running.wait()
            handled.append(order["id"])

    async with TestClient(app, partitions=1) as client:
        for i in range(10):
            await client.publish("orders", {"id": i})
        await client.drain()
        assert client.committed("shop", "orders", 0) == 10
    assert sorted(handled) == list(range(10))
    assert running.most == 4


async def test_key_mode_runs_up_to_concurrency_handlers_when_a_fetch_holds_more_keys() -> None:
    app = App("shop")
    running = InFlight()
    four_running = asyncio.Event()
    handled: list[tuple[str, int]] = []

    @app.consume("orders", ordering="key", concurrency=4)
    async def on_order(message: Message) -> None:
        with running:
            if running.now == 4:
                four_running.set()
            await four_running.wait()
            assert message.key is not None
            handled.append((message.key.decode(), message.offset))

    async with TestClient(app, partitions=1) as client:
        for i in range(60):
            await client.publish("orders", b"x", key=f"c{i % 30}")
        await client.drain()
        assert client.committed("shop", "orders", 0) == 60
    assert running.most == 4
    by_key: dict[str, list[int]] = defaultdict(list)
    for key, offset in handled:
        by_key[key].append(offset)
    assert len(by_key) == 30
    assert all(offsets == sorted(offsets) for offsets in by_key.values())


async def test_two_replicas_in_one_group_split_the_partitions() -> None:
    handled: dict[str, list[int]] = {"left": [], "right": []}

    def replica(side: str) -> App:
        app = App("shop")

        @app.consume("orders")
        async def on_order(order: dict[str, int]) -> None:
            handled[side].append(order["id"])

        return app

    left, right = TestClient(replica("left")), TestClient(replica("right"))
    right.broker = left.broker  # two replicas of one app, on one broker
    async with left, right:
        for i in range(40):
            await left.publish("orders", {"id": i})
        await left.drain()
        owned = [consumer_worker(client, "on_order").status().assigned for client in (left, right)]
    assert owned[0]
    assert owned[1]
    assert not owned[0] & owned[1]
    assert len(owned[0] | owned[1]) == 4
    assert sorted(handled["left"] + handled["right"]) == list(range(40))  # each exactly once


# -- failures -------------------------------------------------------------------------------


async def test_a_failing_message_is_retried_while_its_partition_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App("shop")
    handled: list[str] = []
    attempts: list[float] = []
    other_partition_done = asyncio.Event()

    @app.consume("orders", retry=FAST_RETRY)
    async def on_order(name: str) -> None:
        if name == "bad":
            attempts.append(time.monotonic())
            if len(attempts) < 3 or not other_partition_done.is_set():
                raise RuntimeError("inventory service unavailable")
        handled.append(name)
        if name == "q2":
            other_partition_done.set()

    async with TestClient(app, partitions=2) as client:
        placed = [await client.publish("orders", name) for name in ("bad", "q1", "after", "q2")]
        assert [tp.partition for tp, _ in placed] == [0, 1, 0, 1]  # round-robin
        await client.drain()
        assert client.committed("shop", "orders", 0) == 2
        assert client.committed("shop", "orders", 1) == 2

    # Partition 1 went on while "bad" was retried; "after" waited for "bad" to succeed.
    assert handled.index("q2") < handled.index("bad") < handled.index("after")
    assert len(attempts) >= 3
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.01 * 0.85  # 10 ms, give or take its 10% jitter
    assert gaps[1] >= 0.02 * 0.85  # then doubled
    failures = [r for r in caplog.records if "failed: RuntimeError" in r.getMessage()]
    pattern = re.compile(
        r"orders\[0\]@0 attempt (\d) failed: RuntimeError: inventory service unavailable; "
        r"retrying in ([\d.]+)s$"
    )
    said = [pattern.search(r.getMessage()) for r in failures[:2]]
    # Each wait is scattered by up to its 10% jitter, and the line rounds it to the millisecond.
    assert [(m.group(1), float(m.group(2))) for m in said if m] == [
        ("1", pytest.approx(0.01, abs=0.001 + 0.0005)),
        ("2", pytest.approx(0.02, abs=0.002 + 0.0005)),
    ]
    assert failures[0].exc_info is not None  # the first failure has its traceback
    assert all(r.exc_info is None for r in failures[1:])  # the repeats do not


async def test_a_reject_without_dead_letter_is_logged_skipped_and_committed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App("shop")
    handled: list[int] = []

    @app.consume("orders")
    async def on_order(order: dict[str, int]) -> None:
        if order["id"] == 1:
            raise Reject("order 1 has no customer")
        handled.append(order["id"])

    async with TestClient(app, partitions=1) as client:
        for i in range(3):
            await client.publish("orders", {"id": i})
        await client.drain()
        assert client.committed("shop", "orders", 0) == 3
    assert handled == [0, 2]
    assert "⊘ orders[0]@1 rejected and skipped: Reject: order 1 has no customer" in caplog.text


def dead_letter_app(
    **options: object,
) -> tuple[App, list[Message], list[int]]:
    """An app whose `on_order` fails as its payload says, with a reader of the dead letters."""
    app = App("shop")
    dead: list[Message] = []
    calls: list[int] = []

    @app.consume("orders", dead_letter="orders.DLQ", retry=FAST_RETRY, **options)
    async def on_order(order: dict[str, str]) -> None:
        calls.append(1)
        failure = order.get("fail")
        if failure == "reject":
            raise Reject("customer is blocked")
        if failure == "value":
            raise ValueError("quantity must be positive")
        if failure == "crash":
            raise RuntimeError("warehouse down")

    @app.consume("orders.DLQ", group="dead-letters")
    async def read_dead_letters(message: Message) -> None:
        dead.append(message)

    return app, dead, calls


async def test_a_rejected_message_goes_to_the_dead_letter_topic_with_its_story() -> None:
    app, dead, calls = dead_letter_app()

    async with TestClient(app, partitions=1) as client:
        await client.publish(
            "orders", {"fail": "reject"}, key="customer-9", headers={"trace-id": "abc"}
        )
        await client.drain()
        assert client.committed("shop", "orders", 0) == 1

    (letter,) = dead
    assert letter.topic == "orders.DLQ"
    assert letter.key == b"customer-9"
    assert letter.value == b'{"fail":"reject"}'
    assert letter.headers[0] == ("trace-id", b"abc")  # the original headers come first
    story = headers_of(letter)
    assert {k: v for k, v in story.items() if k != "taskflow-traceback"} == {
        "trace-id": "abc",
        "content-type": "application/json",
        "taskflow-original-topic": "orders",
        "taskflow-original-partition": "0",
        "taskflow-original-offset": "0",
        "taskflow-original-timestamp": story["taskflow-original-timestamp"],
        "taskflow-consumer-group": "shop",
        "taskflow-attempts": "1",
        "taskflow-reason": "rejected",
        "taskflow-exception-type": "taskflow.exceptions.Reject",
        "taskflow-exception-message": "customer is blocked",
    }
    assert int(story["taskflow-original-timestamp"]) > 0
    assert 'raise Reject("customer is blocked")' in story["taskflow-traceback"]
    assert calls == [1]


async def test_a_message_that_exhausts_max_attempts_is_dead_lettered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app, dead, calls = dead_letter_app(max_attempts=3)

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"fail": "crash"})
        await client.publish("orders", {"fail": ""})
        await client.drain()
        assert client.committed("shop", "orders", 0) == 2

    (letter,) = dead
    story = headers_of(letter)
    assert story["taskflow-attempts"] == "3"
    assert story["taskflow-reason"] == "exhausted"
    assert story["taskflow-exception-type"] == "builtins.RuntimeError"
    assert story["taskflow-exception-message"] == "warehouse down"
    assert len(calls) == 4  # three attempts, then the next message
    assert "orders[0]@0 exhausted after 3 attempt(s) (RuntimeError: warehouse down)" in caplog.text


async def test_reject_on_sends_a_message_straight_to_the_dead_letters() -> None:
    app, dead, calls = dead_letter_app(reject_on=(ValueError,), max_attempts=5)

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"fail": "value"})
        await client.drain()

    (letter,) = dead
    story = headers_of(letter)
    assert (story["taskflow-attempts"], story["taskflow-reason"]) == ("1", "rejected")
    assert story["taskflow-exception-type"] == "builtins.ValueError"
    assert calls == [1]


async def test_a_payload_that_is_not_json_is_dead_lettered_at_once() -> None:
    app, dead, calls = dead_letter_app()

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", b"{not json")
        await client.drain()
        assert client.committed("shop", "orders", 0) == 1

    (letter,) = dead
    assert letter.value == b"{not json"
    story = headers_of(letter)
    assert story["taskflow-attempts"] == "1"
    assert story["taskflow-exception-type"] == "taskflow.exceptions.DecodeError"
    assert "not valid JSON" in story["taskflow-exception-message"]
    assert calls == []  # the handler never saw it


async def test_a_payload_that_is_not_json_is_skipped_without_dead_letters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App("shop")
    handled: list[dict[str, int]] = []

    @app.consume("orders")
    async def on_order(order: dict[str, int]) -> None:
        handled.append(order)

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", b"{not json")
        await client.publish("orders", {"id": 2})
        await client.drain()
        assert client.committed("shop", "orders", 0) == 2
    assert handled == [{"id": 2}]
    assert "⊘ orders[0]@0 rejected and skipped: DecodeError: payload of orders[0]@0" in caplog.text


async def test_a_handler_past_its_timeout_counts_as_a_failed_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App("shop")
    attempts: list[int] = []

    @app.consume("orders", timeout=0.05, retry=FAST_RETRY)
    async def on_order(order: dict[str, int]) -> None:
        attempts.append(order["id"])
        if len(attempts) == 1:
            await asyncio.Event().wait()  # hangs: the timeout cancels it

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 7})
        await client.drain()
        assert client.committed("shop", "orders", 0) == 1
    assert attempts == [7, 7]
    assert (
        "orders[0]@0 attempt 1 failed: HandlerTimeout: ran past its timeout of 0.05s" in caplog.text
    )


async def test_a_plain_def_handler_runs_in_a_thread() -> None:
    app = App("shop")
    handled: list[tuple[int, bool]] = []

    @app.consume("orders")
    def on_order(order: dict[str, int]) -> None:
        handled.append((order["id"], threading.current_thread() is threading.main_thread()))

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 1})
        await client.publish("orders", {"id": 2})
        await client.drain()
    assert handled == [(1, False), (2, False)]


async def test_the_context_gives_app_state_logger_message_and_publish(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "shop")
    app = App("shop")
    invoices: list[tuple[dict[str, int], bytes | None]] = []
    seen: list[tuple[str, int, str]] = []

    @app.on_startup
    async def open_db() -> None:
        app.state.db = []

    @app.consume("orders")
    async def on_order(order: dict[str, int], ctx: Context) -> None:
        assert ctx.app is app
        assert ctx.message is not None
        ctx.state.db.append(order["id"])
        ctx.logger.info("order %s saved", order["id"])
        seen.append((ctx.message.topic, ctx.message.offset, ctx.worker))
        await ctx.publish("invoices", {"order": order["id"]}, key=f"invoice-{order['id']}")

    @app.consume("invoices", group="invoicing")
    async def on_invoice(invoice: dict[str, int], ctx: Context) -> None:
        assert ctx.message is not None
        invoices.append((invoice, ctx.message.key))

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 41})
        await client.drain()
        assert client.committed("invoicing", "invoices", 0) == 1

    assert app.state.db == [41]
    assert seen == [("orders", 0, "on_order")]
    assert invoices == [({"order": 41}, b"invoice-41")]
    (line,) = [r for r in caplog.records if r.getMessage() == "order 41 saved"]
    assert (line.name, getattr(line, "worker", None)) == ("shop", "on_order")


# -- flow control and shutdown --------------------------------------------------------------


async def test_a_full_partition_is_paused_then_resumed_and_nothing_is_lost() -> None:
    app = App("shop")
    gate = asyncio.Event()
    first_started = asyncio.Event()
    handled: list[int] = []

    @app.consume("events", max_buffered=10)
    async def on_event(message: Message) -> None:
        first_started.set()
        await gate.wait()
        handled.append(message.offset)

    tp = TopicPartition("events", 0)
    async with TestClient(app, partitions=1) as client:
        worker = consumer_worker(client, "on_event")
        for i in range(10):
            await client.publish("events", str(i))
        await first_started.wait()
        assert worker.status().paused == frozenset({tp})

        for i in range(10, 25):
            await client.publish("events", str(i))
        await settle()
        assert worker.status().in_flight == 10  # the fetcher left the new records alone

        gate.set()
        await client.drain()
        assert worker.status().paused == frozenset()
        assert client.committed("shop", "events", 0) == 25
    assert handled == list(range(25))


async def test_shutdown_lets_a_running_handler_finish_and_commits_it() -> None:
    app = App("shop")
    started = asyncio.Event()
    shipped: list[int] = []

    @app.consume("orders")
    async def ship(order: dict[str, int], ctx: Context) -> None:
        started.set()
        await ctx.stopping.wait()  # still busy when shutdown begins
        await asyncio.sleep(0)
        shipped.append(order["id"])

    client = TestClient(app, partitions=1)
    async with client:
        await client.publish("orders", {"id": 5})
        await started.wait()
    assert shipped == [5]
    assert client.committed("shop", "orders", 0) == 1
    assert client.report is not None
    assert client.report.clean


async def test_a_handler_running_past_the_shutdown_timeout_is_cancelled_and_not_committed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App("shop")
    stuck = asyncio.Event()
    shipped: list[int] = []

    @app.consume("orders")
    async def ship(order: dict[str, int]) -> None:
        if order["id"] == 2:
            stuck.set()
            await asyncio.Event().wait()
        shipped.append(order["id"])

    client = TestClient(app, partitions=1, shutdown_timeout=0.1)
    async with client:
        await client.publish("orders", {"id": 1})
        await client.publish("orders", {"id": 2})
        await stuck.wait()
    assert shipped == [1]
    assert client.committed("shop", "orders", 0) == 1  # the first only: the second comes again
    assert client.report is not None
    assert client.report.cancelled == ("ship",)
    assert not client.report.clean
    assert "cancelling worker ship: it did not finish within 0.1s" in caplog.text
    assert "cancelled handler ship for orders[0]@1: not committed" in caplog.text


async def test_status_reports_committed_offsets_high_watermarks_and_lag() -> None:
    app = App("facts")
    release = asyncio.Event()

    @app.consume("orders")
    async def hold(message: Message) -> None:
        if message.value == b"hold":
            await release.wait()

    async with TestClient(app, partitions=1) as client:
        worker = consumer_worker(client, "hold")
        await client.publish("orders", b"first")
        await client.publish("orders", b"hold")
        await client.publish("orders", b"after")
        while client.committed("facts", "orders", 0) != 1:
            await client.broker.group("facts").wait_for_commit()

        status = worker.status()

        (partition,) = status.partitions
        assert partition.tp == TopicPartition("orders", 0)
        assert (partition.committed, partition.high_watermark, partition.lag) == (1, 3, 2)
        assert status.in_flight == 2  # the held message and the one queued behind it
        assert (status.kind, status.activity) == ("consumer", "consuming")
        release.set()
        await client.drain()
        assert worker.status().lag == 0


async def test_a_deferred_message_is_run_again_without_counting_an_attempt() -> None:
    app = App("defer")
    calls: list[int] = []

    @app.consume("orders", dead_letter="orders.DLQ", max_attempts=1)
    async def flaky_store(message: Message) -> None:
        calls.append(message.offset)
        if len(calls) <= 3:
            raise Defer("the store is down", delay=0.01)

    dead: list[Message] = []

    @app.consume("orders.DLQ", group="watch")
    async def watch(message: Message) -> None:
        dead.append(message)

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", b"x")
        await client.drain()
    assert calls == [0, 0, 0, 0]  # three deferrals, then it ran
    assert dead == []  # max_attempts=1, yet never dead-lettered: a deferral is not an attempt
    assert client.committed("defer", "orders", 0) == 1


async def test_a_message_deferred_at_shutdown_is_left_uncommitted() -> None:
    app = App("defer-stop")
    tried = asyncio.Event()

    @app.consume("orders")
    async def never_now(message: Message) -> None:
        tried.set()
        raise Defer("not now", delay=60)

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", b"x")
        await tried.wait()
    assert client.report is not None
    assert client.report.clean  # shutdown did not wait out the 60 s delay
    assert client.committed("defer-stop", "orders", 0) in (None, 0)


async def test_ctx_attempt_counts_the_attempts_at_a_message() -> None:
    app = App("attempts")
    seen: list[int] = []

    @app.consume("orders", retry=Backoff(initial=0.001, maximum=0.002))
    async def flaky(message: Message, ctx: Context) -> None:
        seen.append(ctx.attempt)
        if len(seen) < 3:
            raise RuntimeError("not yet")

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", b"x")
        await client.drain()
    assert seen == [1, 2, 3]


@pytest.mark.parametrize("ordering", ["partition", "key"])
async def test_a_blocked_loop_is_reported_naming_the_record_being_handled(
    ordering: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = App("shop")

    @app.consume("orders", ordering=ordering, **({"concurrency": 4} if ordering == "key" else {}))
    async def on_order(message: Message) -> None:
        if message.value == b"block":
            time.sleep(0.5)  # noqa: ASYNC251 - the bug the watch reports

    watch = LoopWatch(interval=0.05, limit=0.2)
    with caplog.at_level(logging.WARNING, logger="taskflow.loop"):
        async with TestClient(app, partitions=1) as client:
            watch.start()
            try:
                await client.publish("orders", b"first", key="a")
                await client.publish("orders", b"block", key="b")
                await client.drain()
            finally:
                watch.stop()

    reports = [r.getMessage() for r in caplog.records if "is blocked" in r.getMessage()]
    assert reports
    assert "running handler on_order for orders[0]@1" in reports[0]


@pytest.mark.parametrize("finishes", [True, False], ids=["finishes", "is-cancelled"])
async def test_stopping_inside_a_fetched_batch_commits_exactly_what_finished(
    finishes: bool,
) -> None:
    app = App("shop")
    first_held, release_first, third_started = asyncio.Event(), asyncio.Event(), asyncio.Event()
    shipped: list[int] = []

    @app.consume("orders")
    async def ship(order: dict[str, int], ctx: Context) -> None:
        if order["id"] == 0:  # the others arrive meanwhile, to be fetched as one batch
            first_held.set()
            await release_first.wait()
        if order["id"] == 3:
            third_started.set()
            await (ctx.stopping.wait() if finishes else asyncio.Event().wait())
        shipped.append(order["id"])

    client = TestClient(app, partitions=1, shutdown_timeout=0.2)
    async with client:
        await client.publish("orders", {"id": 0})
        await first_held.wait()
        for i in range(1, 7):
            await client.publish("orders", {"id": i})
        release_first.set()
        await third_started.wait()
        async with asyncio.timeout(5):  # committed below the running record, while it runs
            while client.committed("shop", "orders", 0) != 3:
                await client.broker.group("shop").wait_for_commit()
    # the running record finishes (and, before the partition closes, maybe a few more), or not
    assert shipped == list(range(len(shipped)))
    assert len(shipped) >= 4 if finishes else shipped == [0, 1, 2]
    assert client.committed("shop", "orders", 0) == len(shipped)


# -- tombstones ------------------------------------------------------------------------------


async def test_a_tombstone_reaches_message_and_optional_handlers_and_is_skipped_by_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = App("shop")
    seen: dict[str, list[object]] = defaultdict(list)

    @app.consume("orders", group="raw")
    async def raw(message: Message) -> None:
        seen["raw"].append(message.value)

    @app.consume("orders", group="optional")
    async def optional(order: dict[str, int] | None) -> None:
        seen["optional"].append(order)

    @app.consume("orders", group="strict", dead_letter="orders.DLQ")
    async def strict(order: dict[str, int]) -> None:
        seen["strict"].append(order)

    caplog.set_level(logging.DEBUG, logger="shop")
    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 1}, key="a")
        await client.publish("orders", None, key="a")
        await client.publish("orders", b"", key="a")  # empty, not a tombstone
        await client.publish("orders", None, key="a")
        await client.drain()
        strict_status = consumer_worker(client, "strict").status()
        dead_letters = client.broker.topic("orders.DLQ").logs

    assert seen["raw"] == [b'{"id":1}', None, b"", None]
    assert seen["optional"][:2] == [{"id": 1}, None]
    assert seen["strict"] == [{"id": 1}]  # the empty value failed to decode: rejected
    assert strict_status.count("skip_tombstone") == 2
    assert strict_status.count("dead_letter") == 1  # the empty value, never a tombstone
    assert [letter.value for log in dead_letters for letter in log] == [b""]
    told = [r for r in caplog.records if "tombstones of orders[0] are skipped" in r.getMessage()]
    assert len(told) == 1  # once per partition
    assert told[0].levelno == logging.DEBUG
    assert "payload type of strict does not admit None (first: orders[0]@1)" in told[0].message


async def test_a_rejected_tombstone_is_dead_lettered_as_a_tombstone() -> None:
    app = App("shop")

    @app.consume("orders", dead_letter="orders.DLQ")
    async def on_order(message: Message) -> None:
        raise Reject("a deletion cannot be handled here")

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", None, key="a")
        await client.drain()
        [letter] = client.broker.topic("orders.DLQ").logs[0]

    assert letter.value is None
    assert letter.key == b"a"
    assert letter.header("taskflow-reason") == b"rejected"


async def test_a_handler_publishes_a_tombstone_with_a_none_value() -> None:
    app = App("shop")

    @app.consume("orders")
    async def on_order(order: dict[str, str], ctx: Context) -> None:
        await ctx.publish("customers", None, key=order["customer"])

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"customer": "c-1"})
        await client.drain()
        [deleted] = client.broker.topic("customers").logs[0]

    assert (deleted.key, deleted.value) == (b"c-1", None)


# -- where a group starts ---------------------------------------------------------------------


async def test_start_latest_leaves_out_what_was_written_before_the_group_first_joined() -> None:
    app = App("shop")
    seen: dict[str, list[int]] = defaultdict(list)

    @app.consume("orders", group="replay")  # the default: earliest
    async def replay(order: dict[str, int]) -> None:
        seen["replay"].append(order["id"])

    # Kafka's own options mean nothing to the memory broker: it takes them and goes on.
    @app.consume(
        "orders",
        group="live",
        start="latest",
        consumer_options={"isolation_level": "read_committed"},
    )
    async def live(order: dict[str, int]) -> None:
        seen["live"].append(order["id"])

    client = TestClient(app, partitions=1)
    await client.broker.start()
    await client.broker.publish("orders", b'{"id": 1}')  # before the app starts
    async with client:
        await client.publish("orders", {"id": 2})
        await client.drain()

    assert seen == {"replay": [1, 2], "live": [2]}
