"""The scheduled worker: runs a periodic task on its schedule's grid, never overlapping itself.

Ticks come from the schedule (the epoch-aligned grid for intervals); the worker waits on the app's
clock for each, runs the job in its own task, and goes straight back to waiting, so a slow job never
shifts later ticks. A tick that comes while the previous run is still going is skipped, logged and
counted. A failing run is logged with its traceback and the schedule goes on.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from taskflow.context import Context, Tick, WorkerLogger
from taskflow.handler import call_with_timeout

if TYPE_CHECKING:
    from taskflow.app import App
    from taskflow.clock import Clock
    from taskflow.handler import Handler
    from taskflow.specs import ScheduleSpec

__all__ = ["ScheduledWorker"]


class ScheduledWorker:
    """Runs one periodic task."""

    kind = "periodic"

    def __init__(
        self,
        spec: ScheduleSpec,
        app: App,
        handler: Handler,
        *,
        clock: Clock,
        stopping: asyncio.Event,
        rng: random.Random | None = None,
    ) -> None:
        self.spec = spec
        self.app = app
        self.handler = handler
        self.clock = clock
        self.stopping = stopping
        self.rng = rng or random.Random()
        self.log = WorkerLogger(logging.getLogger(app.name), spec.name)
        self.runs = 0
        self.failures = 0
        self.skipped = 0
        self.last_tick: datetime | None = None
        self._stop = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None
        self._job: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> str:
        """One line for `taskflow info`."""
        return f"runs {self.spec.schedule.describe()}, next at {self.next_tick().isoformat()}"

    def next_tick(self) -> datetime:
        """The grid time of the next run."""
        after = self.clock.now()
        if self.last_tick is not None and self.last_tick > after:
            after = self.last_tick
        return self.spec.schedule.next_after(after)

    # -- the Worker protocol ---------------------------------------------------------------

    async def start(self) -> None:
        self.log.info("→ scheduled %s", self.spec.schedule.describe())
        try:
            async with asyncio.TaskGroup() as group:
                if self.spec.run_at_start:
                    self._launch(group, Tick(self.name, self.clock.now()))
                if not self._stop.is_set():  # else stop() came first: nothing to wait for
                    self._ticker = group.create_task(self._tick(group), name=f"{self.name}:ticks")
        finally:
            self._ticker = None
            self.log.info("← stopped scheduling")

    async def stop(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.cancel()  # it only ever waits on the clock; a running job is not touched

    async def _tick(self, group: asyncio.TaskGroup) -> None:
        """Wait for each grid tick (plus jitter) and launch its run; ends when cancelled by stop."""
        while True:
            tick = self.next_tick()
            await self.clock.sleep_until(tick + self._jitter())
            self.last_tick = tick
            self._launch(group, Tick(self.name, tick))

    # -- running ---------------------------------------------------------------------------

    async def run_once(self, tick: Tick) -> None:
        """Run the job for `tick` now, raising what it raises (for `TestClient.run_schedule`)."""
        ctx = Context(self.app, self.name, self.log, self.stopping, tick=tick)
        await self._call(tick, ctx)

    def _launch(self, group: asyncio.TaskGroup, tick: Tick) -> None:
        if self._job is not None and not self._job.done():
            self.skipped += 1
            self.log.warning(
                "⏭ %s skipped: the previous run is still going (%d skipped so far)",
                tick,
                self.skipped,
            )
            return
        self._job = group.create_task(self._run(tick), name=f"{self.name}:{tick.scheduled_at}")

    async def _run(self, tick: Tick) -> None:
        ctx = Context(self.app, self.name, self.log, self.stopping, tick=tick)
        started = time.perf_counter()
        late = (self.clock.now() - tick.scheduled_at).total_seconds()
        try:
            await self._call(tick, ctx)
        except asyncio.CancelledError:
            self.log.warning("cancelled run %s after %s", tick, _ms(started))
            raise
        except MemoryError:
            raise
        except Exception:
            self.failures += 1
            self.log.exception("✗ %s failed after %s", tick, _ms(started))
        else:
            self.runs += 1
            self.log.info("✓ %s ● %s (%.0fms late)", tick, _ms(started), late * 1000)

    async def _call(self, tick: Tick, ctx: Context) -> None:
        await call_with_timeout(self.handler, tick, ctx, self.spec.timeout)

    # -- waiting ---------------------------------------------------------------------------

    def _jitter(self) -> timedelta:
        jitter = self.spec.jitter
        return jitter * self.rng.random() if jitter else jitter


def _ms(started: float) -> str:
    return f"{(time.perf_counter() - started) * 1000:.0f}ms"
