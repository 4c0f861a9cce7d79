"""A consumer whose one message takes TASKFLOW_TEST_SECONDS to handle.

A startup hook publishes the message. The handler logs "handling", then appends ``started <time>``
to the file named by TASKFLOW_TEST_MARKS, sleeps, and appends ``finished <time>``, so a test can
signal the process while the handler is busy and see whether it finished.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from taskflow import App, Context

app = App("slow")


def _mark(event: str) -> None:
    with Path(os.environ["TASKFLOW_TEST_MARKS"]).open("a") as marks:
        marks.write(f"{event} {time.time()!r}\n")


@app.on_startup
async def publish_one_job() -> None:
    await app.publish("jobs", {"id": 1})


@app.consume("jobs")
async def on_job(job: dict[str, int], ctx: Context) -> None:
    _mark("started")
    ctx.logger.info("handling job %d", job["id"])
    await asyncio.sleep(float(os.environ.get("TASKFLOW_TEST_SECONDS", "1")))
    _mark("finished")
