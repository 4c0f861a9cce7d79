"""Periodic tasks for ``taskflow trigger`` and ``taskflow info`` (tests/test_cli.py).

Its startup hook opens a Redis client on ``TASKFLOW_REDIS_URL`` as ``app.state.redis`` (so a task
that runs proves the hooks ran) and its shutdown hook closes it. Each run of ``beat`` appends
``<tick> <pid>`` to the list ``OPS_PREFIX + "runs"`` (default ``ops:runs``); with ``OPS_HOLD``
set, it first waits (up to 20 s) for an item on the list of that name, so a test decides when it
ends. ``broken`` raises; ``local`` has ``fleet=False``.
"""

from __future__ import annotations

import os

from redis.asyncio import Redis

from taskflow import App, Context
from taskflow.stores.schedule import epoch

app = App("ops")
_prefix = os.environ.get("OPS_PREFIX", "ops:")


@app.on_startup
async def open_redis() -> None:
    app.state.redis = Redis.from_url(os.environ["TASKFLOW_REDIS_URL"])


@app.on_shutdown
async def close_redis() -> None:
    await app.state.redis.aclose()


@app.every(hours=1)
async def beat(ctx: Context) -> None:
    assert ctx.scheduled_at is not None
    hold = os.environ.get("OPS_HOLD")
    if hold:
        await ctx.state.redis.blpop([hold], timeout=20)
    await ctx.state.redis.rpush(f"{_prefix}runs", f"{epoch(ctx.scheduled_at)} {os.getpid()}")


@app.every(hours=1)
async def broken(ctx: Context) -> None:
    raise ValueError("boom")


@app.every(hours=1, fleet=False)
async def local(ctx: Context) -> None:
    await ctx.state.redis.rpush(f"{_prefix}local", str(os.getpid()))
