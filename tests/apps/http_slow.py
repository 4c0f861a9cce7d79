"""A consumer whose one message is held until the test sends SIGUSR1, for the operations endpoint.

A startup hook publishes the message. The handler logs "handling job 1", waits for SIGUSR1 (at most
30 s) and logs "finished job 1", so a test can stop the process while the handler is busy and
watch /readyz during the drain.
"""

from __future__ import annotations

import asyncio
import signal

from taskflow import App, Context

app = App("http-slow")

RELEASE_LIMIT = 30.0
released = asyncio.Event()


@app.on_startup
async def publish_one_job() -> None:
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, released.set)
    await app.publish("jobs", {"id": 1})


@app.consume("jobs")
async def on_job(job: dict[str, int], ctx: Context) -> None:
    ctx.logger.info("handling job %d", job["id"])
    async with asyncio.timeout(RELEASE_LIMIT):
        await released.wait()
    ctx.logger.info("finished job %d", job["id"])
