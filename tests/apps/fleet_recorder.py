"""A periodic task that records each of its runs in Redis, for the fleet process tests.

Run as several replicas (``taskflow run tests.apps.fleet_recorder:app``), all on the Redis of
``TASKFLOW_REDIS_URL``, which also keeps the fleet's tick claims. Each run of the task ``beat``:

1. appends ``<tick> <pid> <unix time>`` to the list ``{prefix}started`` (``tick`` in Unix
   seconds, as in the tick's claim key);
2. sleeps ``FLEET_JOB_SECONDS`` (default 0);
3. appends the same kind of line to ``{prefix}finished``.

Configured by environment variables:

- ``FLEET_RECORD_URL``: where the lists are kept, a plain ``redis://`` URL (default
  ``TASKFLOW_REDIS_URL``; set it when the fleet's Redis is a cluster);
- ``FLEET_PREFIX``: the prefix of the two lists (default ``runs:``);
- ``FLEET_SECONDS``: the task's interval (default 1);
- ``FLEET_JOB_SECONDS``: how long each run takes (default 0);
- ``FLEET_LEASE``: the no-overlap lease in seconds (default taskflow's, 30).
"""

from __future__ import annotations

import asyncio
import os
import time

from redis.asyncio import Redis

from taskflow import App, Context
from taskflow.stores.schedule import epoch

app = App("fleet")

_prefix = os.environ.get("FLEET_PREFIX", "runs:")
_job_seconds = float(os.environ.get("FLEET_JOB_SECONDS", "0"))
_redis: Redis | None = None


def redis() -> Redis:
    """The job's own client, made on first use inside the app's event loop."""
    global _redis
    if _redis is None:
        url = os.environ.get("FLEET_RECORD_URL") or os.environ["TASKFLOW_REDIS_URL"]
        _redis = Redis.from_url(url)
    return _redis


async def beat(ctx: Context) -> None:
    assert ctx.scheduled_at is not None
    tick = epoch(ctx.scheduled_at)  # as in the tick's claim key
    await redis().rpush(f"{_prefix}started", f"{tick} {os.getpid()} {time.time():.6f}")
    if _job_seconds:
        await asyncio.sleep(_job_seconds)
    await redis().rpush(f"{_prefix}finished", f"{tick} {os.getpid()} {time.time():.6f}")


app.add_schedule(
    beat,
    float(os.environ.get("FLEET_SECONDS", "1")),
    lease=float(os.environ.get("FLEET_LEASE", "30")),
)
