"""The Scheduling guide's tasks: an interval, cron expressions in a time zone,
catching up a missed nightly run, and reading the last run from Redis.

    taskflow run examples.scheduling:app --redis redis://localhost:6379/0
"""

from __future__ import annotations

from datetime import datetime, timedelta

from redis.asyncio import Redis

from taskflow import App, Context
from taskflow.stores import LastRun, RedisScheduleStore

app = App("billing")


# --8<-- [start:every]
@app.every(minutes=5)  # also seconds=, hours=, days=, or a timedelta
async def cleanup(ctx: Context) -> None:
    ctx.logger.info("run for %s", ctx.scheduled_at)


# --8<-- [end:every]


# --8<-- [start:cron]
@app.cron("*/5 * * * *", tz="Europe/Berlin")
async def report(ctx: Context) -> None:
    ctx.logger.info("report for %s", ctx.scheduled_at)


@app.cron("0 9 * * mon-fri", tz="America/New_York", catch_up="latest")
async def morning_digest(ctx: Context) -> None:
    ctx.logger.info("digest for %s", ctx.scheduled_at)


# --8<-- [end:cron]


# --8<-- [start:catch-up]
@app.cron(
    "0 2 * * *",
    tz="Europe/Berlin",
    catch_up="latest",
    grace=timedelta(hours=6),
)
async def nightly_export(ctx: Context) -> None:
    ctx.logger.info("export for %s", ctx.scheduled_at)


# --8<-- [end:catch-up]


# --8<-- [start:store]
async def runs(redis_url: str) -> tuple[LastRun | None, datetime | None]:
    """What the fleet last recorded for nightly_export, and its next tick."""
    redis = Redis.from_url(redis_url)
    try:
        store = RedisScheduleStore(redis, "billing")
        # LastRun(tick=..., outcome='ok', duration=12.874, ...)
        last = await store.last_run("nightly_export")
        upcoming = await store.next_run("nightly_export")
        return last, upcoming
    finally:
        await redis.aclose()


# --8<-- [end:store]
