"""The scheduled worker: runs a periodic task on its schedule's ticks, never overlapping itself.

Ticks come from the schedule (the epoch-aligned grid for intervals, a cron expression's fire times);
the worker waits on the app's clock for each, handles it in its own task, and goes straight back to
waiting, so a slow job never shifts later ticks. A failing run is logged with its traceback and the
schedule goes on.

On its own (no Redis, or ``fleet=False``) the worker runs every tick here; a tick that comes while
the previous run is still going is skipped, logged and counted.

Across a fleet (Redis configured and ``fleet=True``, the default) every replica computes the same
ticks and runs one only after claiming it in Redis, so each tick runs on exactly one replica. A run
holds a lease on the task that it renews while it goes on, so the task never overlaps itself on any
replica; a run whose lease is lost is cancelled. At start, ticks missed while every replica was down
are caught up as ``catch_up`` says. `taskflow.stores.schedule` describes the keys.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from taskflow import loopwatch
from taskflow.context import Context, Tick, WorkerLogger
from taskflow.exceptions import StoreError
from taskflow.handler import threads_of
from taskflow.stores.schedule import RedisScheduleStore, TickClaim, new_owner
from taskflow.telemetry.status import PeriodicStatus

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from taskflow.app import App
    from taskflow.clock import Clock
    from taskflow.handler import Handler
    from taskflow.specs import ScheduleSpec

__all__ = ["CLAIM_MARGIN", "ScheduledWorker"]

CLAIM_MARGIN = 60.0
"""Seconds a tick's claim outlives the tick beyond one period (and the grace, when catching up):
a replica that wakes late for a tick still finds it claimed."""

# Apps already told that their periodic tasks run on every replica for want of Redis.
_told: weakref.WeakSet[App] = weakref.WeakSet()


@dataclass(slots=True)
class _Lease:
    """The lease one run (or one catch-up) holds on its task."""

    owner: str
    lost: bool = False


class ScheduledWorker:
    """Runs one periodic task.

    Attributes:
        runs: Runs here that succeeded.
        failures: Runs here that raised or timed out.
        skipped: Ticks not run because the previous run was still going.
        elsewhere: Ticks another replica claimed (fleet mode).
        unclaimed: Ticks not run because Redis did not answer the claim (fleet mode).
        lost: Runs cancelled because their lease was lost (fleet mode).
        caught_up: Missed ticks run at start (fleet mode, ``catch_up``).
    """

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
        redis: Redis | None = None,
    ) -> None:
        self.spec = spec
        self.app = app
        self.handler = handler
        self.clock = clock
        self.stopping = stopping
        self.rng = rng or random.Random()
        self.log = WorkerLogger(logging.getLogger(app.name), spec.name)
        self.store = (
            RedisScheduleStore(redis, app.name) if redis is not None and spec.fleet else None
        )
        self.runs = self.failures = self.skipped = 0
        self.elsewhere = self.unclaimed = self.lost = self.caught_up = 0
        self.last_tick: datetime | None = None
        self._stop = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None
        self._job: asyncio.Task[None] | None = None
        self._store_failing = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def fleet(self) -> bool:
        """True when each tick runs once across the fleet (claimed in Redis)."""
        return self.store is not None

    def describe(self) -> str:
        """One line for `taskflow info`."""
        return f"runs {self.spec.schedule.describe()}, next at {self.next_tick().isoformat()}"

    @property
    def running(self) -> bool:
        """True while a run of this task is going on in this process."""
        return self._job is not None and not self._job.done()

    def status(self) -> PeriodicStatus:
        """How this periodic task is: its ticks, whether a run is going, its counts."""
        threads = threads_of(self.spec.handler)
        return PeriodicStatus(
            kind=self.kind,
            activity="running" if self.running else "waiting",
            schedule=self.spec.schedule.describe(),
            last_tick=self.last_tick,
            next_tick=self.next_tick(),
            running=self.running,
            runs=self.runs,
            failures=self.failures,
            skipped=self.skipped,
            stuck_threads=len(threads.stuck) if threads is not None else None,
        )

    def next_tick(self) -> datetime:
        """The time of the next tick."""
        after = self.clock.now()
        if self.last_tick is not None and self.last_tick > after:
            after = self.last_tick
        return self.spec.schedule.next_after(after)

    # -- the Worker protocol ---------------------------------------------------------------

    async def start(self) -> None:
        where = " across the fleet" if self.fleet else ""
        self.log.info("→ scheduled %s%s", self.spec.schedule.describe(), where)
        self._tell_mode()
        try:
            async with asyncio.TaskGroup() as group:
                if self.store is not None:
                    group.create_task(self._prepare(), name=f"{self.name}:catch-up")
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
        """Wait for each tick (plus jitter) and launch its run; ends when cancelled by stop."""
        while True:
            tick = self.next_tick()
            await self.clock.sleep_until(tick + self._jitter())
            self.last_tick = tick
            self._launch(group, Tick(self.name, tick))

    def _launch(self, group: asyncio.TaskGroup, tick: Tick) -> None:
        name = f"{self.name}:{tick.scheduled_at}"
        if self.store is not None:
            group.create_task(self._fire(tick), name=name)
            return
        if self._job is not None and not self._job.done():
            self.skipped += 1
            self.log.warning(
                "⏭ %s skipped: the previous run is still going (%d skipped so far)",
                tick,
                self.skipped,
            )
            return
        self._job = group.create_task(self._run_here(tick), name=name)

    def _tell_mode(self) -> None:
        if self.store is not None or not self.spec.fleet:
            return
        if self.spec.catch_up != "none":
            self.log.warning(
                "catch_up=%r needs Redis to know which ticks ran; no tick is caught up",
                self.spec.catch_up,
            )
        if self.app not in _told:
            _told.add(self.app)
            self.log.info(
                "periodic tasks run on every replica: running each tick once across the fleet "
                "needs Redis (App(redis_url=...), --redis or TASKFLOW_REDIS_URL)"
            )

    # -- running ---------------------------------------------------------------------------

    async def run_once(self, tick: Tick) -> None:
        """Run the job for `tick` now, raising what it raises (for `TestClient.run_schedule`).

        It is not claimed and takes no lease: it runs here whatever the fleet does.
        """
        ctx = Context(self.app, self.name, self.log, self.stopping, tick=tick)
        await self._call(tick, ctx)

    async def _run_here(self, tick: Tick) -> None:
        started, late = time.perf_counter(), self._late(tick)
        if await self._run(tick) == "ok":
            self._ran(tick, started, late)

    async def _run(self, tick: Tick) -> str:
        """Run the job for `tick`; "ok", or "failed" (logged with its traceback)."""
        ctx = Context(self.app, self.name, self.log, self.stopping, tick=tick)
        started = time.perf_counter()
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
            return "failed"
        self.runs += 1
        return "ok"

    async def _call(self, tick: Tick, ctx: Context) -> None:
        task = loopwatch.handling(self.name, {self.name: tick}, self.name)
        try:
            await self.handler(
                tick, ctx
            )  # a timeout= is a layer of the stack: middleware/timeout.py
        finally:
            loopwatch.done(task)

    def _late(self, tick: Tick) -> float:
        return (self.clock.now() - tick.scheduled_at).total_seconds()

    def _ran(self, tick: Tick, started: float, late: float) -> None:
        self.log.info("✓ %s ● %s (%.0fms late)", tick, _ms(started), late * 1000)

    # -- across the fleet ------------------------------------------------------------------

    async def _fire(self, tick: Tick) -> None:
        """Claim `tick` for the fleet and run it when it is ours and no run holds the lease."""
        assert self.store is not None
        lease = _Lease(new_owner())
        now = self.clock.now()
        ttl = self._claim_ttl(tick.scheduled_at, now)
        if ttl <= 0:
            self.log.warning(
                "⏭ %s skipped: woke %.0fs late, past its claim", tick, self._late(tick)
            )
            return
        try:
            found, holder = await self.store.claim(
                self.name,
                tick.scheduled_at,
                lease.owner,
                ttl=ttl,
                lease=self.spec.lease,
                started=now,
                next_tick=self.next_tick(),
            )
        except StoreError as exc:
            self._unanswered(tick, exc)
            return
        self._answered()
        if found is TickClaim.ELSEWHERE:
            self.elsewhere += 1
            self.log.debug("%s is claimed by %s", tick, holder)
        elif found is TickClaim.BUSY:
            self.skipped += 1
            self.log.warning(
                "⏭ %s skipped: the previous run is still going on %s (%d skipped so far)",
                tick,
                holder,
                self.skipped,
            )
        else:
            await self._leased(lease, self._run_leased(tick, lease, release=True))

    def _claim_ttl(self, tick: datetime, now: datetime) -> float:
        """Seconds left of `tick`'s claim: one period, the margin and, to catch up, the grace."""
        period = (self.spec.schedule.next_after(tick) - tick).total_seconds()
        grace = self.spec.grace if self.spec.catch_up != "none" else 0.0
        return period + grace + CLAIM_MARGIN - (now - tick).total_seconds()

    async def _leased(self, lease: _Lease, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` while renewing `lease`; if the lease is lost, `work` is cancelled."""
        async with asyncio.TaskGroup() as group:
            job = group.create_task(work, name=f"{self.name}:run")
            keeper = group.create_task(self._keep(lease, job), name=f"{self.name}:lease")
            job.add_done_callback(lambda _: keeper.cancel())

    async def _keep(self, lease: _Lease, job: asyncio.Task[None]) -> None:
        """Renew the lease every third of it until cancelled; cancel `job` if it is lost."""
        assert self.store is not None
        length = timedelta(seconds=self.spec.lease)
        renewed = self.clock.now()
        while True:
            await self.clock.sleep_until(self.clock.now() + length / 3)
            try:
                kept = await self.store.renew(self.name, lease.owner, self.spec.lease)
            except StoreError as exc:
                if self.clock.now() - renewed < length:
                    self.log.warning("renewing the lease failed (%s); trying again", exc)
                    continue
                kept = False  # not renewed for a whole lease: another replica may hold it now
            if kept:
                renewed = self.clock.now()
                continue
            lease.lost = True
            self.lost += 1
            self.log.error(
                "lost the lease on %s (%s): another replica may run it now, so this run is "
                "cancelled",
                self.name,
                lease.owner,
            )
            job.cancel()
            return

    async def _run_leased(self, tick: Tick, lease: _Lease, *, release: bool) -> None:
        """Run `tick` under `lease` and record how it went (releasing the lease if `release`)."""
        started, late = time.perf_counter(), self._late(tick)
        outcome = "cancelled"
        try:
            outcome = await self._run(tick)
        finally:
            if lease.lost:
                outcome = "lost"
            await self._finish(tick, lease, outcome, time.perf_counter() - started, release)
        if outcome == "ok":
            self._ran(tick, started, late)

    async def _finish(
        self, tick: Tick, lease: _Lease, outcome: str, duration: float, release: bool
    ) -> None:
        assert self.store is not None
        try:
            await self.store.finish(
                self.name, lease.owner, tick.scheduled_at, outcome, duration, release=release
            )
        except StoreError as exc:
            self.log.warning(
                "recording the end of %s failed (%s); its lease runs out by itself", tick, exc
            )

    def _unanswered(self, tick: Tick, exc: StoreError) -> None:
        self.unclaimed += 1
        if self._store_failing:
            self.log.debug("✗ %s not run: it could not be claimed (%s)", tick, exc)
            return
        self._store_failing = True
        self.log.error(
            "✗ %s not run: it could not be claimed (%s); no tick runs until Redis answers",
            tick,
            exc,
        )

    def _answered(self) -> None:
        if self._store_failing:
            self._store_failing = False
            self.log.info("Redis answers again: ticks are claimed and run")

    # -- catching up -----------------------------------------------------------------------

    async def _prepare(self) -> None:
        """Record the next tick; then run the ticks missed while every replica was down."""
        assert self.store is not None
        try:
            await self.store.set_next(self.name, self.next_tick())
            if self.spec.catch_up != "none":
                await self._catch_up()
        except StoreError as exc:
            self.log.error("catching up missed ticks failed: %s", exc)

    async def _catch_up(self) -> None:
        assert self.store is not None
        last = await self.store.last_run(self.name)
        # A task that never ran missed nothing.
        missed = [] if last is None else self._missed(last.tick, self.clock.now())
        if self.spec.catch_up == "latest":
            missed = missed[-1:]
        if not missed:
            self.log.info("↻ no missed tick to catch up")
            return
        lease = _Lease(new_owner())
        holder = await self.store.acquire(self.name, lease.owner, self.spec.lease)
        if holder is not None:
            self.log.info("no catch-up here: %s is running on %s", self.name, holder)
            return
        before = self.caught_up
        try:
            await self._leased(lease, self._run_missed(lease, missed))
        finally:
            try:
                await self.store.release(self.name, lease.owner)
            except StoreError as exc:
                self.log.warning("releasing the lease failed (%s); it runs out by itself", exc)
        self.log.info("↻ caught up: %d missed tick(s) run here", self.caught_up - before)

    def _missed(self, last: datetime, now: datetime) -> list[datetime]:
        """Ticks after `last`, up to `now`, no older than the grace."""
        oldest = now - timedelta(seconds=self.spec.grace)
        after = max(last, oldest - timedelta(microseconds=1))
        ticks: list[datetime] = []
        tick = self.spec.schedule.next_after(after)
        while tick <= now:
            ticks.append(tick)
            tick = self.spec.schedule.next_after(tick)
        return ticks

    async def _run_missed(self, lease: _Lease, ticks: list[datetime]) -> None:
        """Claim and run each missed tick in order, under the catch-up's lease."""
        assert self.store is not None
        for scheduled in ticks:
            if self._stop.is_set():
                return
            tick = Tick(self.name, scheduled)
            now = self.clock.now()
            try:
                found, _ = await self.store.claim(
                    self.name,
                    scheduled,
                    lease.owner,
                    ttl=self._claim_ttl(scheduled, now),
                    lease=self.spec.lease,
                    started=now,
                    next_tick=self.next_tick(),
                )
            except StoreError as exc:
                self.log.error("catching up %s failed: %s", tick, exc)
                return
            if found is TickClaim.BUSY:
                return  # the lease is someone else's now
            if found is TickClaim.RUN:
                self.caught_up += 1
                self.log.info("↻ catching up %s", tick)
                await self._run_leased(tick, lease, release=False)

    # -- waiting ---------------------------------------------------------------------------

    def _jitter(self) -> timedelta:
        jitter = self.spec.jitter
        return jitter * self.rng.random() if jitter else jitter


def _ms(started: float) -> str:
    return f"{(time.perf_counter() - started) * 1000:.0f}ms"
