"""A consumer whose handler blocks the event loop: ``time.sleep`` in an ``async def``.

A startup hook publishes one job (``{"id": 7}``) to the process's own memory broker. The handler
logs ``blocking the loop``, sleeps ``BLOCKING_SECONDS`` (default 5) without awaiting, then logs
``the loop is free again``.
"""

from __future__ import annotations

import os
import time

from taskflow import App, Context

app = App("blocking")


@app.on_startup
async def publish_one_job() -> None:
    await app.publish("jobs", {"id": 7})


@app.consume("jobs")
async def on_job(job: dict[str, int], ctx: Context) -> None:
    ctx.logger.info("blocking the loop")
    time.sleep(float(os.environ.get("BLOCKING_SECONDS", "5")))  # noqa: ASYNC251 - the bug shown
    ctx.logger.info("the loop is free again")
