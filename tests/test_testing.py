"""The test kit itself: TestClient's life cycle and drain, and ManualClock's rules."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import pytest

from taskflow import App, Backoff, ConfigurationError, Context, Reject, StateError
from taskflow.clock import SystemClock
from taskflow.testing import ManualClock, Published, TestClient

START = datetime(2026, 1, 1, tzinfo=UTC)


# -- TestClient -----------------------------------------------------------------------------


async def test_publishing_outside_the_client_block_is_a_state_error() -> None:
    app = App("svc")

    @app.consume("orders")
    async def on_order(order: dict[str, int]) -> None:
        pass

    client = TestClient(app)
    with pytest.raises(StateError, match="use `async with TestClient"):
        await client.publish("orders", {"id": 1})
    async with client:
        await client.publish("orders", {"id": 1})
    with pytest.raises(StateError):
        await client.publish("orders", {"id": 2})
    with pytest.raises(StateError):
        client.runtime  # noqa: B018


async def test_drain_times_out_naming_the_group_that_is_behind() -> None:
    app = App("svc")
    attempts: list[int] = []

    @app.consume("orders", group="billing", retry=Backoff(initial=0.01, maximum=0.02))
    async def on_order(order: dict[str, int]) -> None:
        attempts.append(order["id"])
        raise RuntimeError("database is down")

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 1})
        with pytest.raises(
            TimeoutError, match=r"^drain timed out after 0.2s: billing \(1 behind\)$"
        ):
            await client.drain(timeout=0.2)
    assert len(attempts) > 1  # it kept trying all along
    assert (client.committed("billing", "orders", 0) or 0) == 0  # nothing got past it


class Recorder:
    """A custom worker that notes when it starts and stops."""

    name = "recorder"

    def __init__(self, journal: list[str]) -> None:
        self.journal = journal
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self.journal.append("worker start")
        await self._stopping.wait()

    async def stop(self) -> None:
        self.journal.append("worker stop")
        self._stopping.set()


async def test_lifespan_and_hooks_wrap_the_workers_and_share_state() -> None:
    journal: list[str] = []

    @asynccontextmanager
    async def lifespan(app: App) -> AsyncIterator[None]:
        journal.append("lifespan enter")
        app.state.greeting = "hello"
        yield
        journal.append("lifespan exit")

    app = App("svc", lifespan=lifespan)
    app.add_worker(Recorder(journal))

    @app.on_startup
    async def connect() -> None:
        journal.append(f"startup 1 sees {app.state.greeting}")

    @app.on_startup
    async def warm() -> None:
        journal.append("startup 2")

    @app.on_shutdown
    async def disconnect() -> None:
        journal.append("shutdown")

    @app.consume("names")
    async def greet(name: str, ctx: Context) -> None:
        journal.append(f"{ctx.state.greeting} {name}")

    @app.worker
    async def heartbeat(ctx: Context) -> None:
        journal.append("function worker start")
        await ctx.stopping.wait()
        journal.append("function worker stop")

    async with TestClient(app) as client:
        assert app.running
        await client.publish("names", "ada")
        await client.drain()
    assert not app.running
    assert journal == [
        "lifespan enter",
        "startup 1 sees hello",
        "startup 2",
        "function worker start",
        "worker start",
        "hello ada",
        "worker stop",
        "function worker stop",
        "shutdown",
        "lifespan exit",
    ]


async def test_app_publish_works_inside_the_client_only() -> None:
    app = App("svc")
    handled: list[dict[str, int]] = []

    @app.consume("orders")
    async def on_order(order: dict[str, int]) -> None:
        handled.append(order)

    async with TestClient(app) as client:
        await app.publish("orders", {"id": 3}, key="c1")
        await client.drain()
    assert handled == [{"id": 3}]
    with pytest.raises(StateError, match="'svc' is not running"):
        await app.publish("orders", {"id": 4})


async def test_the_client_exposes_the_apps_clock() -> None:
    clock = ManualClock(START)
    async with TestClient(App("svc", clock=clock)) as client:
        assert client.clock is clock


# -- What the app wrote --------------------------------------------------------------------


JSON_TYPE = "application/json"


async def test_published_lists_records_in_write_order_with_keys_headers_and_tombstones() -> None:
    app = App("svc")

    @app.consume("orders")
    async def on_order(order: dict[str, int] | None, ctx: Context) -> None:
        if order is None:
            await ctx.publish("invoices", None, key="gone")
            return
        await ctx.publish(
            "invoices",
            {"order": order["id"]},
            key=f"c{order['id']}",
            headers={"trace": f"t{order['id']}", "raw": b"\xff"},
        )

    async with TestClient(app, partitions=1) as client:
        assert client.published("invoices") == []
        await client.publish("orders", {"id": 1})
        await client.publish("orders", {"id": 2})
        await client.publish("orders", None)
        await client.drain()
        invoices = client.published("invoices")

    assert [(r.key, r.json(), r.headers) for r in invoices] == [
        (b"c1", {"order": 1}, {"trace": "t1", "raw": "\\xff", "content-type": JSON_TYPE}),
        (b"c2", {"order": 2}, {"trace": "t2", "raw": "\\xff", "content-type": JSON_TYPE}),
        (b"gone", None, {}),
    ]
    assert invoices[0].raw_headers == (
        ("trace", b"t1"),
        ("raw", b"\xff"),
        ("content-type", JSON_TYPE.encode()),
    )
    assert invoices[2].value is None  # a tombstone
    assert [(r.partition, r.offset) for r in invoices] == [(0, 0), (0, 1), (0, 2)]


async def test_published_follows_the_write_order_across_partitions() -> None:
    async with TestClient(App("svc"), partitions=4) as client:
        for n in range(8):
            await client.publish("events", n, key=f"k{n}")
        records = client.published("events")
    assert [r.json() for r in records] == list(range(8))
    assert len({r.partition for r in records}) > 1
    json_type = (("content-type", JSON_TYPE.encode()),)
    assert records[0] == Published(
        b"0", b"k0", {"content-type": JSON_TYPE}, records[0].partition, 0, json_type
    )


async def test_dead_letters_after_a_reject_say_where_from_and_why() -> None:
    app = App("svc")

    @app.consume("orders", group="billing", dead_letter="orders.DLQ")
    async def on_order(order: dict[str, int]) -> None:
        raise Reject(f"order {order['id']} has no lines")

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 7}, key="c7", headers={"trace": "abc"})
        await client.drain()
        (letter,) = client.dead_letters("orders.DLQ")

    assert (letter.topic, letter.partition, letter.offset) == ("orders.DLQ", 0, 0)
    assert (letter.original_topic, letter.original_partition, letter.original_offset) == (
        "orders",
        0,
        0,
    )
    assert letter.reason == "rejected"
    assert letter.exception_type == "taskflow.exceptions.Reject"
    assert letter.exception_message == "order 7 has no lines"
    assert letter.attempts == 1
    assert letter.group == "billing"
    assert (letter.key, letter.json(), letter.headers) == (
        b"c7",
        {"id": 7},
        {"trace": "abc", "content-type": JSON_TYPE},
    )
    assert letter.value_omitted is None


# --8<-- [start:exhausted]
async def test_dead_letters_after_the_last_attempt_count_the_attempts() -> None:
    app = App("svc")

    @app.consume(
        "orders",
        group="billing",
        max_attempts=2,
        retry=Backoff(initial=0.01, maximum=0.02),  # fast, for the test
        dead_letter="orders.DLQ",
    )
    async def on_order(order: dict[str, int]) -> None:
        raise ConnectionError("database is down")

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 1})
        await client.drain()
    (letter,) = client.dead_letters("orders.DLQ")
    assert (letter.reason, letter.attempts) == ("exhausted", 2)
    assert letter.exception_type == "builtins.ConnectionError"
    assert letter.exception_message == "database is down"
    assert "ConnectionError: database is down" in letter.traceback
    assert (letter.original_topic, letter.group) == ("orders", "billing")
    assert letter.json() == {"id": 1}


# --8<-- [end:exhausted]


async def test_dead_letters_of_a_topic_that_holds_other_records_is_an_error() -> None:
    async with TestClient(App("svc")) as client:
        await client.publish("orders", {"id": 1})
        with pytest.raises(ValueError, match="is not a taskflow dead letter"):
            client.dead_letters("orders")
        assert client.dead_letters("nothing-here") == []


# -- TestClient(clock=...) ------------------------------------------------------------------


async def test_the_client_drives_the_clock_of_an_app_built_without_one() -> None:
    app = App("svc")
    ticks: list[datetime] = []

    @app.every(60)
    async def report(ctx: Context) -> None:
        assert ctx.tick is not None
        ticks.append(ctx.tick.scheduled_at)

    own = app.clock
    clock = ManualClock(START)
    async with TestClient(app, clock=clock) as client:
        assert client.clock is clock
        assert app.clock is clock
        await clock.wait_for_sleepers()
        await clock.advance(150)
    assert ticks == [START + timedelta(minutes=1), START + timedelta(minutes=2)]
    assert app.clock is own
    assert isinstance(app.clock, SystemClock)


async def test_a_clock_for_an_app_with_another_clock_is_refused() -> None:
    clock = ManualClock(START)
    app = App("svc", clock=clock)
    with pytest.raises(ConfigurationError, match="already has a clock of its own"):
        TestClient(app, clock=ManualClock(START))
    async with TestClient(app, clock=clock) as client:  # the same clock is no conflict
        assert client.clock is clock
    assert app.clock is clock


async def test_the_apps_clock_comes_back_when_startup_fails() -> None:
    app = App("svc")

    @app.on_startup
    async def connect() -> None:
        raise ConnectionError("no database")

    own = app.clock
    with pytest.raises(ConnectionError, match="no database"):
        async with TestClient(app, clock=ManualClock(START)):
            pass
    assert app.clock is own


# -- ManualClock ----------------------------------------------------------------------------


def test_the_clock_starts_where_told_and_only_when_aware() -> None:
    assert ManualClock().now() == START
    assert ManualClock(START + timedelta(hours=5)).now() == START + timedelta(hours=5)
    with pytest.raises(ValueError, match="aware"):
        ManualClock(datetime(2026, 1, 1))


class Sleepers:
    """Tasks that sleep on a clock and note the time they woke at."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.woke: list[tuple[float, datetime]] = []
        self.tasks: list[asyncio.Task[None]] = []

    def start(self, *seconds: float) -> None:
        self.tasks += [asyncio.create_task(self.sleep(s)) for s in seconds]

    async def sleep(self, seconds: float) -> None:
        await self.clock.sleep_until(START + timedelta(seconds=seconds))
        self.woke.append((seconds, self.clock.now()))


async def test_advance_wakes_each_sleeper_in_order_at_its_moment() -> None:
    clock = ManualClock(START)
    sleepers = Sleepers(clock)
    sleepers.start(5, 2, 9, 2)
    await clock.wait_for_sleepers(4)

    await clock.advance(6)
    assert sleepers.woke == [(2, START + timedelta(seconds=2))] * 2 + [
        (5, START + timedelta(seconds=5))
    ]
    assert clock.now() == START + timedelta(seconds=6)
    assert clock.sleepers == 1

    await clock.advance(timedelta(seconds=3))
    assert sleepers.woke[-1] == (9, START + timedelta(seconds=9))
    assert clock.sleepers == 0


async def test_set_moves_to_a_moment_and_never_back() -> None:
    clock = ManualClock(START)
    sleepers = Sleepers(clock)
    sleepers.start(60)
    await clock.wait_for_sleepers()

    await clock.set(START + timedelta(minutes=2))
    assert sleepers.woke == [(60, START + timedelta(minutes=1))]
    with pytest.raises(ValueError, match="does not go back in time"):
        await clock.set(START + timedelta(minutes=1))
    with pytest.raises(ValueError, match="does not go back in time"):
        await clock.advance(-1)
    assert clock.now() == START + timedelta(minutes=2)


async def test_advance_to_next_wakes_only_the_earliest_sleeper() -> None:
    clock = ManualClock(START)
    sleepers = Sleepers(clock)
    with pytest.raises(StateError, match="nothing is sleeping"):
        await clock.advance_to_next()
    sleepers.start(30, 10)
    await clock.wait_for_sleepers(2)

    assert await clock.advance_to_next() == START + timedelta(seconds=10)
    assert sleepers.woke == [(10, START + timedelta(seconds=10))]
    assert clock.next_wakeup() == START + timedelta(seconds=30)


async def test_wait_for_sleepers_waits_until_enough_tasks_sleep() -> None:
    clock = ManualClock(START)
    sleepers = Sleepers(clock)
    sleepers.start(1)
    waiting = asyncio.create_task(clock.wait_for_sleepers(2))
    await clock.wait_for_sleepers(1)
    assert not waiting.done()

    sleepers.start(2)
    async with asyncio.timeout(5):
        await waiting
    assert clock.sleepers == 2


async def test_a_cancelled_sleeper_is_forgotten() -> None:
    clock = ManualClock(START)
    sleepers = Sleepers(clock)
    sleepers.start(1)
    await clock.wait_for_sleepers()
    (task,) = sleepers.tasks
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert clock.sleepers == 0
    assert clock.next_wakeup() is None
    await clock.advance(5)
    assert sleepers.woke == []


async def test_sleeping_until_a_past_moment_returns_at_once() -> None:
    clock = ManualClock(START)
    sleepers = Sleepers(clock)
    await sleepers.sleep(0)
    await sleepers.sleep(-10)
    assert sleepers.woke == [(0, START), (-10, START)]
    assert clock.sleepers == 0


def test_one_clock_serves_one_event_loop_after_another() -> None:
    """A clock made at import time, as in the docs, outlives each test's event loop."""
    clock = ManualClock(START)

    async def nap_for_a_second() -> None:
        sleepers = Sleepers(clock)
        waiting = asyncio.create_task(clock.wait_for_sleepers())
        await asyncio.sleep(0)
        assert not waiting.done()
        sleepers.start((clock.now() - START).total_seconds() + 1)
        async with asyncio.timeout(5):
            await waiting
        await clock.advance(1)
        assert len(sleepers.woke) == 1

    for _ in range(2):
        with asyncio.Runner(debug=True) as runner:
            runner.run(nap_for_a_second())
    assert clock.now() == START + timedelta(seconds=2)
