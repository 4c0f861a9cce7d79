"""A consumer with one message in flight until shutdown begins, for the supervisor tests.

A startup hook publishes one job to the process's own memory broker. The handler logs
``process <index> (pid <pid>) holding job``, waits for shutdown (`ctx.stopping`), then takes
``PROC_DRAIN_SECONDS`` more (default 0.2) and logs ``process <index> (pid <pid>) finished job``;
so a clean exit shows the job was drained, and a long drain can be cut short by a second signal.
"""

from __future__ import annotations

import asyncio
import os

from taskflow import App, Context

app = App("proc")
_me = f"process {os.environ.get('TASKFLOW_PROCESS_INDEX', '-')} (pid {os.getpid()})"


@app.on_startup
async def publish_one_job() -> None:
    await app.publish("jobs", {"id": 1})


@app.consume("jobs")
async def on_job(job: dict[str, int], ctx: Context) -> None:
    ctx.logger.info("%s holding job", _me)
    await ctx.stopping.wait()
    await asyncio.sleep(float(os.environ.get("PROC_DRAIN_SECONDS", "0.2")))
    ctx.logger.info("%s finished job", _me)
