"""An app whose startup or shutdown hook hangs, as TASKFLOW_TEST_HANG says ("startup"/"shutdown").

The hook logs "hanging in <phase>" first, so a test knows when to send its signals.
"""

from __future__ import annotations

import asyncio
import logging
import os

from taskflow import App, Context

app = App("hanging")
log = logging.getLogger("hanging")


async def _maybe_hang(phase: str) -> None:
    if os.environ.get("TASKFLOW_TEST_HANG") == phase:
        log.info("hanging in %s", phase)
        await asyncio.Event().wait()


@app.on_startup
async def connect() -> None:
    await _maybe_hang("startup")


@app.on_shutdown
async def disconnect() -> None:
    await _maybe_hang("shutdown")


@app.worker
async def idle(ctx: Context) -> None:
    await ctx.stopping.wait()
