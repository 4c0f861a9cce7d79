"""The function worker: an `async def f(ctx)` registered with `@app.worker`, run for a lifetime."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from taskflow.context import Context, WorkerLogger

if TYPE_CHECKING:
    from taskflow.app import App
    from taskflow.specs import FunctionWorkerSpec

__all__ = ["FunctionWorker"]


class FunctionWorker:
    """Runs a long-lived async function; `stop` sets its `ctx.stopping`."""

    kind = "worker"

    def __init__(self, spec: FunctionWorkerSpec, app: App) -> None:
        self.spec = spec
        self.app = app
        self.log = WorkerLogger(logging.getLogger(app.name), spec.name)
        self._stop = asyncio.Event()

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> str:
        """One line for `taskflow info`."""
        return "runs until shutdown"

    async def start(self) -> None:
        self._stop.clear()
        await self.spec.func(Context(self.app, self.name, self.log, self._stop))

    async def stop(self) -> None:
        self._stop.set()
