"""A custom worker (the Worker protocol), beside a periodic task.

taskflow run examples.custom_worker:app
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from taskflow import App, Context, WorkerStatus

logger = logging.getLogger(__name__)


class Heartbeat:
    """Logs a heartbeat every `every` seconds until it is stopped."""

    def __init__(self, name: str = "heartbeat", every: float = 1.0) -> None:
        self.name = name
        self.every = every
        self.beats = 0
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Work until stop(); if this raises, the Manager restarts it."""
        self._stopping.clear()
        while not self._stopping.is_set():
            self.beats += 1
            logger.info("heartbeat %d", self.beats)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), timeout=self.every
                )

    async def stop(self) -> None:
        """Ask start() to return; it wakes at once, mid-sleep."""
        self._stopping.set()

    def status(self) -> WorkerStatus:
        """Optional: what /status shows of it. Only reads; never waits."""
        return WorkerStatus(
            kind="heartbeat",
            activity="stopping" if self._stopping.is_set() else "beating",
            details={"beats": self.beats, "every": self.every},
        )


app = App("custom-worker")
app.add_worker(Heartbeat())


@app.every(seconds=5)
async def report(ctx: Context) -> None:
    ctx.logger.info("still here at %s", ctx.scheduled_at)
