"""Periodic tasks across a fleet, in-process, on driven clocks and the real Redis.

Each `App` below is one replica: same app name, same task, its own TestClient, one shared Redis.
The fleet's logic (once per tick, no overlap, catching up) runs twice: on Redis, and on the
in-process schedule store shared by the replicas in place of Redis (the `fleet` fixture).
Every tick a replica handles ends in exactly one log line ("done in", "claimed by", "skipped" or
"not run"), so the tests wait for those lines instead of sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from taskflow import App, Context, runner
from taskflow.stores import (
    IdempotencyStore,
    MemoryIdempotencyStore,
    MemoryScheduleStore,
    RedisScheduleStore,
    ScheduleStore,
)
from taskflow.stores.connect import Stores
from taskflow.stores.schedule import epoch
from taskflow.testing import ManualClock, TestClient
from taskflow.workers import ScheduledWorker
from tests._redis import REDIS_URL

pytestmark = pytest.mark.redis

SECOND = timedelta(seconds=1)
START = datetime(2026, 1, 1, tzinfo=UTC)  # on the grid
APP = "fleet"
# The one line each replica logs per tick it handles, whatever happened to the tick.
HANDLED = re.compile(r"^\S+@\S+ is claimed by |\S+@\S+ (done in|skipped:|not run:) ")


def at(seconds: float) -> datetime:
    return START + seconds * SECOND


class Watch(logging.Handler):
    """Collects the app's log lines; `until` waits (bounded) for a condition on them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed: asyncio.Event | None = None

    @property
    def lines(self) -> list[str]:
        return [record.getMessage() for record in self.records]

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if self._changed is not None:
            self._changed.set()

    def count(self, pattern: str | re.Pattern[str]) -> int:
        regex = re.compile(pattern)
        return sum(1 for line in self.lines if regex.search(line))

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        self._changed = asyncio.Event()
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            tail = "\n".join(self.lines[-20:])
            raise AssertionError(f"timed out; the last lines:\n{tail}") from None
        finally:
            self._changed = None

    async def handled(self, count: int) -> None:
        """Wait until the replicas have handled `count` ticks between them, in all."""
        await self.until(lambda: self.count(HANDLED) >= count)

    async def line(self, pattern: str, count: int = 1) -> None:
        await self.until(lambda: self.count(pattern) >= count)


@pytest.fixture
def watch() -> Iterator[Watch]:
    logger = logging.getLogger(APP)
    handler, level = Watch(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def replica(
    clock: ManualClock,
    job: Callable[[Context], Any],
    schedule: Any = 1,
    **options: Any,
) -> App:
    """One replica of the app, running `job` as the periodic task ``beat``."""
    app = App(APP, redis_url=REDIS_URL, clock=clock)
    app.add_schedule(job, schedule, name="beat", **options)
    return app


def worker(client: TestClient, name: str = "beat") -> ScheduledWorker:
    found = client.runtime.worker(name)
    assert isinstance(found, ScheduledWorker)
    return found


def store(redis: Redis) -> RedisScheduleStore:
    return RedisScheduleStore(redis, APP)


@dataclass
class Fleet:
    store: ScheduleStore
    """Reads the fleet's records."""
    redis: Redis | None
    """The shared Redis, or None when the replicas share an in-process store instead."""


@pytest.fixture(params=["redis", "memory"])
async def fleet(
    request: pytest.FixtureRequest, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Fleet]:
    """The replicas' shared schedule store: Redis, or one in-process store standing in for it."""
    if request.param == "redis":
        yield Fleet(store(redis), redis)
        return
    shared = MemoryScheduleStore(APP)

    @asynccontextmanager
    async def shared_stores(
        app_name: str,
        redis_url: str | None,
        *,
        idempotency: IdempotencyStore | None = None,
        **credentials: str | None,
    ) -> AsyncIterator[Stores]:
        yield Stores(
            app_name,
            MemoryScheduleStore(app_name),
            schedules=shared,
            idempotency=idempotency or MemoryIdempotencyStore(),
        )

    monkeypatch.setattr(runner, "open_stores", shared_stores)
    yield Fleet(shared, None)


# -- once per tick -------------------------------------------------------------------------


async def test_each_tick_runs_on_exactly_one_replica(fleet: Fleet, watch: Watch) -> None:
    clock = ManualClock(START)
    runs: list[tuple[int, datetime | None]] = []

    def recording(index: int) -> Callable[[Context], Any]:
        async def beat(ctx: Context) -> None:
            runs.append((index, ctx.scheduled_at))

        return beat

    apps = [replica(clock, recording(index)) for index in range(3)]
    async with TestClient(apps[0]) as a, TestClient(apps[1]) as b, TestClient(apps[2]) as c:
        assert all(worker(client).fleet for client in (a, b, c))
        for n in range(1, 11):
            await clock.advance(1)
            await watch.handled(3 * n)  # each replica handled the tick: one ran it
        assert sum(worker(client).runs for client in (a, b, c)) == 10
        assert sum(worker(client).elsewhere for client in (a, b, c)) == 20

    assert sorted(tick for _, tick in runs if tick) == [at(n) for n in range(1, 11)]
    for n in range(1, 11):
        assert await fleet.store.claimer("beat", at(n)) is not None  # kept after the run
        if fleet.redis is not None:
            claim = f"taskflow:{{{APP}:beat}}:tick:{epoch(at(n))}"
            assert 0 < await fleet.redis.pttl(claim) <= (1 + 60) * 1000
    last = await fleet.store.last_run("beat")
    assert last is not None
    assert (last.tick, last.outcome) == (at(10), "ok")
    assert last.time == at(10)
    assert last.duration is not None
    assert last.duration >= 0
    assert re.fullmatch(r".+:\d+", last.replica)
    assert await fleet.store.next_run("beat") == at(11)
    assert await fleet.store.acquire("beat", "probe", 1) is None  # released after each run


async def test_a_tick_whose_run_fails_is_not_run_again_elsewhere(
    fleet: Fleet, watch: Watch
) -> None:
    clock = ManualClock(START)
    attempts: list[datetime | None] = []

    async def beat(ctx: Context) -> None:
        attempts.append(ctx.scheduled_at)
        raise ConnectionError("feed down")

    async with TestClient(replica(clock, beat)), TestClient(replica(clock, beat)):
        await clock.advance(1)
        await watch.line(r"beat@\S+ failed after ")
        await watch.handled(1)  # the other replica found it claimed

    assert attempts == [at(1)]
    last = await fleet.store.last_run("beat")
    assert last is not None
    assert last.outcome == "failed"


async def test_fleet_false_runs_every_tick_on_every_replica(redis: Redis, watch: Watch) -> None:
    clock = ManualClock(START)
    runs: list[datetime | None] = []

    async def beat(ctx: Context) -> None:
        runs.append(ctx.scheduled_at)

    one, two = replica(clock, beat, fleet=False), replica(clock, beat, fleet=False)
    async with TestClient(one) as client, TestClient(two):
        assert not worker(client).fleet
        await clock.advance(3)
        await watch.line(r"beat@\S+ done in ", count=6)

    assert sorted(t for t in runs if t) == sorted([at(1), at(2), at(3)] * 2)
    assert await redis.keys("taskflow:*") == []


async def test_without_redis_tasks_run_here_and_say_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(START)
    app = App("alone", redis_url="", clock=clock)
    runs: list[str] = []

    @app.every(seconds=1)
    async def first() -> None:
        runs.append("first")

    @app.every(seconds=1)
    async def second() -> None:
        runs.append("second")

    with caplog.at_level(logging.INFO):
        async with TestClient(app) as client:
            assert not worker(client, "first").fleet
            await clock.advance(1)

    assert sorted(runs) == ["first", "second"]
    notes = [r.getMessage() for r in caplog.records if "needs Redis" in r.getMessage()]
    assert notes == [
        "periodic tasks run on every replica: running each tick once across the fleet needs "
        "Redis (App(redis_url=...), --redis or TASKFLOW_REDIS_URL)"
    ]


async def test_cron_ticks_are_claimed_by_their_unix_time(redis: Redis, watch: Watch) -> None:
    clock = ManualClock(datetime(2026, 6, 30, 21, 59, 59, tzinfo=UTC))
    runs: list[datetime | None] = []

    async def beat(ctx: Context) -> None:
        runs.append(ctx.scheduled_at)

    app = App(APP, redis_url=REDIS_URL, clock=clock)
    app.cron("0 0 * * *", tz="Europe/Berlin", name="beat")(beat)
    async with TestClient(app), TestClient(replica(clock, beat, app.schedules[0].schedule)):
        await clock.advance(1)
        await watch.handled(2)

    midnight_in_berlin = datetime(2026, 6, 30, 22, 0, tzinfo=UTC)
    assert runs == [midnight_in_berlin]
    assert await redis.exists(f"taskflow:{{{APP}:beat}}:tick:{int(midnight_in_berlin.timestamp())}")


async def test_a_periodic_idempotent_task_keeps_done_marks_too(redis: Redis, watch: Watch) -> None:
    clock = ManualClock(START)
    runs: list[datetime | None] = []

    async def beat(ctx: Context) -> None:
        runs.append(ctx.scheduled_at)

    one, two = replica(clock, beat, idempotent=True), replica(clock, beat, idempotent=True)
    async with TestClient(one), TestClient(two):
        await clock.advance(1)
        await watch.handled(2)

    assert runs == [at(1)]
    assert (await redis.get(f"taskflow:{{{APP}:beat}}:idem:{at(1).isoformat()}")).startswith(
        b"done:"
    )


# -- no overlap ----------------------------------------------------------------------------


async def test_a_run_longer_than_the_interval_never_overlaps_across_replicas(
    fleet: Fleet, watch: Watch
) -> None:
    # Two replicas on clocks of their own: only A ticks for the first run, then only B, so the
    # ticks B claims while A's run goes on are skipped because of A's lease, not B's own run.
    clock_a, clock_b = ManualClock(START), ManualClock(START)
    release = asyncio.Event()
    started = asyncio.Event()
    runs: list[tuple[str, datetime | None]] = []
    running = peak = 0

    def job(who: str) -> Callable[[Context], Any]:
        async def beat(ctx: Context) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            runs.append((who, ctx.scheduled_at))
            started.set()
            if who == "A":
                await release.wait()
            running -= 1

        return beat

    async with TestClient(replica(clock_a, job("A"))), TestClient(replica(clock_b, job("B"))) as b:
        await clock_a.advance(1)
        await started.wait()
        for _ in range(3):
            await clock_b.advance(1)  # tick 1 is A's; ticks 2 and 3 find A's run still going
        await watch.handled(3)
        assert watch.count(r"beat@\S+ skipped: the previous run is still going on ") == 2
        assert runs == [("A", at(1))]
        release.set()
        await watch.line(r"beat@2026-01-01T00:00:01\S+ done in ")
        await clock_b.advance(1)
        await watch.line(r"beat@2026-01-01T00:00:04\S+ done in ")
        assert worker(b).skipped == 2

    assert runs == [("A", at(1)), ("B", at(4))]
    assert peak == 1


async def test_a_run_that_loses_its_lease_is_cancelled_and_logged(
    redis: Redis, watch: Watch
) -> None:
    clock = ManualClock(START)
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def beat(ctx: Context) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with TestClient(replica(clock, beat, lease=3)) as client:
        await clock.advance(1)
        await started.wait()
        # As if the lease ran out and another replica took it.
        await redis.set(f"taskflow:{{{APP}:beat}}:running", "another-replica")
        await clock.advance(1)  # a third of the lease: the renewal finds it gone
        async with asyncio.timeout(5):
            await cancelled.wait()
        await watch.line(r"cancelled run beat@2026-01-01T00:00:01")
        assert worker(client).lost == 1

    assert watch.count(r"^lost the lease on beat \(.+\): another replica may run it now") == 1
    lost = [r for r in watch.records if r.getMessage().startswith("lost the lease")]
    assert lost[0].levelno == logging.ERROR
    assert await redis.get(f"taskflow:{{{APP}:beat}}:running") == b"another-replica"  # not released
    last = await store(redis).last_run("beat")
    assert last is not None
    assert (last.tick, last.outcome) == (at(1), "lost")


async def test_a_long_run_renews_its_lease(redis: Redis, watch: Watch) -> None:
    clock = ManualClock(START)
    started, release = asyncio.Event(), asyncio.Event()

    async def beat(ctx: Context) -> None:
        started.set()
        await release.wait()

    async with TestClient(replica(clock, beat, lease=3)) as client:
        beat_worker = worker(client)
        await clock.advance(1)
        await started.wait()
        lease = f"taskflow:{{{APP}:beat}}:running"
        for n in range(2, 8):
            await redis.pexpire(lease, 100_000)
            await clock.advance(1)  # a third of the lease, and a tick that is skipped
            await clock.wait_for_sleepers(2)  # the ticker and the renewal sleep again
            assert 0 < await redis.pttl(lease) <= 3000, n
        assert beat_worker.lost == 0
        release.set()
        await watch.line(r"beat@2026-01-01T00:00:01\S+ done in ")

    assert beat_worker.skipped == 6
    assert not await redis.exists(lease)


# -- catching up ---------------------------------------------------------------------------


async def run_ticks(clock: ManualClock, watch: Watch, count: int, job: Any, **options: Any) -> None:
    """One replica runs `count` ticks, then the whole fleet is down."""
    async with TestClient(replica(clock, job, **options)):
        for n in range(1, count + 1):
            await clock.advance(1)
            await watch.line(r"beat@\S+ done in ", count=n)


@pytest.mark.parametrize(
    ("catch_up", "grace", "caught_up"),
    [
        ("none", 3600, []),
        ("latest", 3600, [8]),
        ("all", 3600, [4, 5, 6, 7, 8]),
        ("all", 3, [6, 7, 8]),  # 5 is more than 3 s before 8.5
        ("latest", 0.4, []),  # 8 is more than 0.4 s before 8.5
    ],
)
async def test_ticks_missed_while_every_replica_was_down_are_caught_up(
    fleet: Fleet, watch: Watch, catch_up: str, grace: float, caught_up: list[int]
) -> None:
    clock = ManualClock(START)
    runs: list[datetime | None] = []

    async def beat(ctx: Context) -> None:
        runs.append(ctx.scheduled_at)

    await run_ticks(clock, watch, 3, beat)
    await clock.advance(5.5)  # ticks 4 to 8 pass with no replica up
    app = replica(clock, beat, catch_up=catch_up, grace=grace)
    async with TestClient(app) as client:
        if caught_up:
            await watch.line(rf"caught up: {len(caught_up)} missed tick\(s\) run here")
        elif catch_up != "none":
            await watch.line(r"no missed tick to catch up")
        await clock.advance(1)
        await watch.line(r"beat@2026-01-01T00:00:09\S+ done in ")
        assert worker(client).caught_up == len(caught_up)

    assert runs == [at(n) for n in (1, 2, 3, *caught_up, 9)]
    assert watch.count(r"catching up beat@") == len(caught_up)


async def test_catching_up_skips_ticks_that_were_claimed_and_a_task_that_never_ran(
    fleet: Fleet, watch: Watch
) -> None:
    clock = ManualClock(START)
    runs: list[datetime | None] = []
    started, release = asyncio.Event(), asyncio.Event()

    async def beat(ctx: Context) -> None:
        runs.append(ctx.scheduled_at)
        started.set()
        if len(runs) == 1:
            await release.wait()

    async with TestClient(replica(clock, beat, catch_up="all")):  # nothing ran before: no catch-up
        await clock.advance(1)
        await started.wait()
        await clock.advance(1)
        await clock.advance(1)
        await watch.line(r"beat@\S+ skipped:", count=2)  # 2 and 3 are claimed, not run
        release.set()
        await watch.line(r"beat@\S+ done in ")
    await clock.advance(2.5)  # 4 and 5 pass with no replica up
    async with TestClient(replica(clock, beat, catch_up="all")):
        await watch.line(r"caught up: 2 missed tick\(s\) run here")

    assert runs == [at(1), at(4), at(5)]


async def test_replicas_starting_together_catch_up_each_missed_tick_once(
    fleet: Fleet, watch: Watch
) -> None:
    clock = ManualClock(START)
    runs: list[datetime | None] = []

    async def beat(ctx: Context) -> None:
        runs.append(ctx.scheduled_at)
        await asyncio.sleep(0)

    await run_ticks(clock, watch, 1, beat)
    await clock.advance(4.5)  # 2 to 5 missed
    apps = [replica(clock, beat, catch_up="all") for _ in range(3)]
    async with TestClient(apps[0]), TestClient(apps[1]), TestClient(apps[2]):
        await watch.line(r"caught up: 4 missed tick\(s\) run here")
        await clock.advance(1)
        await watch.line(r"beat@2026-01-01T00:00:06\S+ done in ")

    assert sorted(t for t in runs if t) == [at(n) for n in range(1, 7)]


# -- Redis trouble -------------------------------------------------------------------------


async def test_ticks_that_cannot_be_claimed_are_not_run_and_logged_once(
    redis: Redis, watch: Watch
) -> None:
    clock = ManualClock(START)
    runs: list[datetime | None] = []

    async def beat(ctx: Context) -> None:
        runs.append(ctx.scheduled_at)

    async with TestClient(replica(clock, beat)) as client:
        fleet = worker(client).store
        assert fleet is not None
        script = fleet._claim
        failures = 0

        async def unreachable(**kwargs: Any) -> Any:
            nonlocal failures
            failures += 1
            raise RedisConnectionError("Connection refused")

        fleet._claim = unreachable  # type: ignore[assignment]
        for n in range(1, 4):
            await clock.advance(1)
            await watch.handled(n)
        fleet._claim = script
        await clock.advance(1)
        await watch.line(r"beat@2026-01-01T00:00:04\S+ done in ")
        assert worker(client).unclaimed == 3

    assert runs == [at(4)]
    errors = [r for r in watch.records if r.levelno >= logging.ERROR]
    messages = [r.getMessage() for r in errors]
    assert len(messages) == 1, messages
    assert messages[0].endswith(
        "beat@2026-01-01T00:00:01+00:00 not run: it could not be claimed (claiming "
        f"taskflow:{{{APP}:beat}}:tick:{epoch(at(1))} failed: Connection refused); "
        "no tick runs until Redis answers"
    )
    assert watch.count(r"^Redis answers again") == 1
