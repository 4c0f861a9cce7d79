"""The scheduled worker on a driven clock: grid, overlap, failures, timeouts, jitter, shutdown."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from taskflow import App, Context, StateError
from taskflow.schedule import EPOCH
from taskflow.testing import ManualClock, TestClient
from taskflow.workers import ScheduledWorker

SECOND = timedelta(seconds=1)
START = datetime(2026, 1, 1, tzinfo=UTC)  # on the grid


def on_grid(moment: datetime, period: timedelta = SECOND) -> bool:
    return (moment - EPOCH) % period == timedelta(0)


def worker(client: TestClient, name: str) -> ScheduledWorker:
    found = client.runtime.worker(name)
    assert isinstance(found, ScheduledWorker)
    return found


@contextmanager
def without_loop_debug() -> Iterator[None]:
    """Asyncio debug mode records a stack per callback: 10x slower for ten thousand ticks."""
    loop = asyncio.get_running_loop()
    loop.set_debug(False)
    try:
        yield
    finally:
        loop.set_debug(True)


async def test_ten_thousand_ticks_stay_on_the_grid_without_drift() -> None:
    clock = ManualClock(START)
    app = App("grid", clock=clock)
    fired: list[tuple[datetime, datetime | None, datetime]] = []

    @app.every(seconds=1)
    async def beat(ctx: Context) -> None:
        assert ctx.tick is not None
        fired.append((ctx.tick.scheduled_at, ctx.scheduled_at, clock.now()))

    with without_loop_debug():
        async with TestClient(app) as client:
            await clock.advance(10_000)
            assert worker(client, "beat").skipped == 0

    assert len(fired) == 10_000
    ticks = [tick for tick, _, _ in fired]
    assert all(scheduled == tick for tick, scheduled, _ in fired)
    assert all(now == tick for tick, _, now in fired)  # each fired at its tick, not after
    assert all(on_grid(tick) for tick in ticks)
    assert ticks[0] == START + SECOND
    assert all(later - earlier == SECOND for earlier, later in itertools.pairwise(ticks))
    assert ticks[-1] == START + 10_000 * SECOND  # zero accumulated drift


async def test_the_first_run_is_at_the_next_grid_tick_not_at_start() -> None:
    clock = ManualClock(START + timedelta(milliseconds=250))
    app = App("grid", clock=clock)
    ran: list[datetime | None] = []

    @app.every(seconds=10)
    async def report(ctx: Context) -> None:
        ran.append(ctx.scheduled_at)

    async with TestClient(app):
        await clock.advance(9.7)  # up to 00:00:09.950
        assert ran == []
        await clock.advance(0.05)
        assert ran == [START + 10 * SECOND]
        await clock.advance(10)
        assert ran == [START + 10 * SECOND, START + 20 * SECOND]


async def test_run_at_start_also_runs_once_at_start() -> None:
    began = START + timedelta(milliseconds=250)
    clock = ManualClock(began)
    app = App("grid", clock=clock)
    ran: list[datetime | None] = []

    @app.every(seconds=10, run_at_start=True)
    async def warm_cache(ctx: Context) -> None:
        ran.append(ctx.scheduled_at)

    async with TestClient(app):
        assert ran == [began]
        await clock.advance(9.75)
        assert ran == [began, START + 10 * SECOND]


async def test_a_tick_during_a_run_is_skipped_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(START)
    app = App("grid", clock=clock)
    release = asyncio.Event()
    ran: list[datetime | None] = []

    @app.every(seconds=1)
    async def slow(ctx: Context) -> None:
        ran.append(ctx.scheduled_at)
        if len(ran) == 1:
            await release.wait()

    async with TestClient(app) as client:
        await clock.advance(3)  # runs at 1; the ticks at 2 and 3 find it still running
        assert ran == [START + SECOND]
        assert worker(client, "slow").skipped == 2
        release.set()
        await clock.advance(1)
        assert ran == [START + SECOND, START + 4 * SECOND]
        assert worker(client, "slow").runs == 2

    skips = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert [skip[skip.index("slow@") :] for skip in skips] == [
        f"slow@{START + 2 * SECOND:%Y-%m-%dT%H:%M:%S+00:00} skipped: the previous run is still "
        "going (1 skipped so far)",
        f"slow@{START + 3 * SECOND:%Y-%m-%dT%H:%M:%S+00:00} skipped: the previous run is still "
        "going (2 skipped so far)",
    ]


async def test_a_failing_run_is_logged_with_its_traceback_and_the_next_tick_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(START)
    app = App("grid", clock=clock)
    ran: list[datetime | None] = []

    @app.every(seconds=1)
    async def sync_prices(ctx: Context) -> None:
        ran.append(ctx.scheduled_at)
        if len(ran) == 1:
            raise ConnectionError("price feed down")

    async with TestClient(app) as client:
        await clock.advance(2)
        assert ran == [START + SECOND, START + 2 * SECOND]
        assert worker(client, "sync_prices").failures == 1
        assert worker(client, "sync_prices").runs == 1

    (failure,) = [r for r in caplog.records if "failed after" in r.getMessage()]
    assert failure.levelno == logging.ERROR
    assert "sync_prices@2026-01-01T00:00:01+00:00 failed after " in failure.getMessage()
    assert failure.exc_info is not None
    assert isinstance(failure.exc_info[1], ConnectionError)
    assert getattr(failure, "worker", None) == "sync_prices"


async def test_a_run_past_its_timeout_is_cancelled_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(START)
    app = App("grid", clock=clock)
    cancelled = asyncio.Event()
    ran: list[datetime | None] = []

    @app.every(seconds=1, timeout=0.05)
    async def stuck(ctx: Context) -> None:
        ran.append(ctx.scheduled_at)
        if len(ran) > 1:
            return
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with TestClient(app) as client:
        await clock.advance(1)
        async with asyncio.timeout(5):
            await cancelled.wait()  # after 0.05 s of real time
        assert worker(client, "stuck").failures == 1
        await clock.advance(1)
        assert ran == [START + SECOND, START + 2 * SECOND]
        assert worker(client, "stuck").runs == 1

    (failure,) = [r for r in caplog.records if "failed after" in r.getMessage()]
    assert failure.exc_info is not None
    assert str(failure.exc_info[1]) == "ran past its timeout of 0.05s"


async def test_jitter_delays_the_run_but_not_its_grid_time() -> None:
    clock = ManualClock(START)
    app = App("grid", clock=clock)
    fired: list[tuple[datetime, datetime]] = []

    @app.every(seconds=1, jitter=0.5)
    async def spread(ctx: Context) -> None:
        assert ctx.scheduled_at is not None
        fired.append((ctx.scheduled_at, clock.now()))

    async with TestClient(app):
        await clock.advance(100.5)  # the run of 00:01:40 fires by 00:01:40.5 at the latest

    assert [tick for tick, _ in fired] == [START + n * SECOND for n in range(1, 101)]
    delays = [(now - tick).total_seconds() for tick, now in fired]
    assert all(0 <= delay < 0.5 for delay in delays)
    assert len(set(delays)) > 50  # spread out, not one fixed delay


async def test_on_shutdown_a_running_job_finishes() -> None:
    clock = ManualClock(START)
    app = App("grid", clock=clock)
    started = asyncio.Event()
    finished: list[datetime | None] = []

    @app.every(seconds=1)
    async def export(ctx: Context) -> None:
        started.set()
        await ctx.stopping.wait()  # still busy when shutdown begins
        await asyncio.sleep(0)
        finished.append(ctx.scheduled_at)

    client = TestClient(app)
    async with client:
        await clock.advance(1)
        assert started.is_set()
    assert finished == [START + SECOND]
    assert client.report is not None
    assert client.report.clean


async def test_a_job_running_past_the_shutdown_timeout_is_cancelled_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(START)
    app = App("grid", clock=clock)
    started = asyncio.Event()

    @app.every(seconds=1)
    async def endless(ctx: Context) -> None:
        started.set()
        await asyncio.Event().wait()

    client = TestClient(app, shutdown_timeout=0.1)
    async with client:
        await clock.advance(1)
        assert started.is_set()
    assert client.report is not None
    assert client.report.cancelled == ("endless",)
    assert "cancelling worker endless: it did not finish within 0.1s" in caplog.text
    assert "cancelled run endless@2026-01-01T00:00:01+00:00 after" in caplog.text


async def test_run_schedule_runs_a_task_now_and_raises_what_it_raises() -> None:
    clock = ManualClock(START)
    app = App("grid", clock=clock)
    ran: list[datetime | None] = []

    @app.every(hours=1)
    async def rotate_keys(ctx: Context) -> None:
        ran.append(ctx.scheduled_at)

    @app.every(hours=1)
    async def broken() -> None:
        raise LookupError("no such key")

    async with TestClient(app) as client:
        await client.run_schedule("rotate_keys")
        assert ran == [START]
        with pytest.raises(LookupError, match="no such key"):
            await client.run_schedule("broken")


async def test_run_schedule_of_an_unknown_task_is_a_state_error() -> None:
    app = App("grid", clock=ManualClock(START))

    @app.every(hours=1)
    async def rotate_keys() -> None:
        pass

    async with TestClient(app) as client:
        with pytest.raises(
            StateError, match=r"no periodic task 'rotate'; the app has \['rotate_keys'\]"
        ):
            await client.run_schedule("rotate")


async def test_a_stopped_worker_stops_waiting_on_the_clock() -> None:
    clock = ManualClock(START)
    app = App("grid", clock=clock)

    @app.every(hours=1)
    async def hourly() -> None:
        pass

    async with TestClient(app):
        assert clock.sleepers == 1
    assert clock.sleepers == 0
    assert clock.next_wakeup() is None


# -- cron across DST changes, on a driven clock --------------------------------------------


@pytest.mark.parametrize(
    ("day_start", "hourly", "at_half_past_two"),
    [
        (  # spring forward: 02:00 -> 03:00
            datetime(2026, 3, 28, 23, tzinfo=UTC),
            ["00", "01", "03", "04", "05", "06"],  # six hours: 02:00 does not exist
            ["2026-03-29T03:00:00+02:00"],  # 02:30 does not exist: it fires when the gap ends
        ),
        (  # fall back: 03:00 -> 02:00
            datetime(2026, 10, 24, 22, tzinfo=UTC),
            ["00", "01", "02", "02", "03", "04"],  # six hours: 02:00 happens twice
            ["2026-10-25T02:30:00+02:00", "2026-10-25T02:30:00+01:00"],  # both 02:30s
        ),
    ],
    ids=["spring-forward", "fall-back"],
)
async def test_cron_tasks_fire_across_a_dst_change_as_croniter_documents(
    day_start: datetime, hourly: list[str], at_half_past_two: list[str]
) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    clock = ManualClock(day_start - timedelta(minutes=1))  # just before local midnight
    app = App("dst", clock=clock, redis_url="")
    fired: dict[str, list[datetime]] = {"hourly": [], "nightly": []}

    @app.cron("0 * * * *", tz="Europe/Berlin")
    async def hourly_job(ctx: Context) -> None:
        assert ctx.scheduled_at == clock.now()  # each fires at its tick
        fired["hourly"].append(clock.now())

    @app.cron("30 2 * * *", tz="Europe/Berlin")
    async def nightly(ctx: Context) -> None:
        fired["nightly"].append(clock.now())

    async with TestClient(app):
        await clock.advance(timedelta(hours=6))

    local = [moment.astimezone(berlin) for moment in fired["hourly"]]
    assert [f"{moment:%H}" for moment in local] == hourly
    assert all(b - a == timedelta(hours=1) for a, b in itertools.pairwise(fired["hourly"]))
    assert [moment.astimezone(berlin).isoformat() for moment in fired["nightly"]] == (
        at_half_past_two
    )
