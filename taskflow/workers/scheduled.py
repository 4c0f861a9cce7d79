"""The scheduled worker: runs a periodic task on its schedule's ticks, never overlapping itself.

Ticks come from the schedule (the epoch-aligned grid for intervals, a cron expression's fire times);
the worker waits on the app's clock for each, handles it in its own task, and goes straight back to
waiting, so a slow job never shifts later ticks. A failing run is logged with its traceback and the
schedule goes on.

Every tick goes one way, over a `ScheduleStore`: the worker claims the tick, and runs it only when
the claim is its own and no run of the task holds the task's lease. A run holds the lease, renewed
while it goes on (`taskflow.stores.lease`), so the task never overlaps itself; a tick that comes
while a run is still going is skipped, logged and counted, and a run whose lease is lost is
cancelled.

Across a fleet (Redis configured and ``fleet=True``, the default) the store is Redis, shared by
every replica, so each tick runs on exactly one replica, and at start the ticks missed while every
replica was down are caught up as ``catch_up`` says. On its own (no Redis, or ``fleet=False``) the
store is the in-process twin: every tick runs here. `taskflow.stores.keys` lists the Redis keys.

On stop no tick is launched any more and the runs going on finish. Runs are tasks of a `Crew`: one
still going when the worker is cancelled (at the shutdown deadline) is cancelled, and one that
ignores that for `ABANDON_GRACE` seconds is given up on and named with its tick. A handler raising
`SystemExit` or `KeyboardInterrupt` fails its run and asks for the process to stop, as a consumer's
does (`taskflow.workers.processing`); any other exception, even a `BaseException`, fails the run.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from taskflow import loopwatch
from taskflow.context import Context, Tick, WorkerLogger
from taskflow.crew import ABANDON_GRACE, Crew
from taskflow.exceptions import ProcessExit, StoreError
from taskflow.handler import threads_of
from taskflow.stores.connect import Stores
from taskflow.stores.health import StoreHealth
from taskflow.stores.lease import LeaseLost, hold, new_owner
from taskflow.stores.schedule import TickClaim
from taskflow.telemetry.status import PeriodicStatus
from taskflow.workers.processing import STOPS_PROCESS, exit_request

if TYPE_CHECKING:
    from taskflow.app import App
    from taskflow.clock import Clock
    from taskflow.handler import Handler
    from taskflow.specs import ScheduleSpec
    from taskflow.stores.schedule import ScheduleStore

__all__ = ["CLAIM_MARGIN", "ScheduledWorker"]

CLAIM_MARGIN = 60.0
"""Seconds a tick's claim outlives the tick beyond one period (and the grace, when catching up):
a replica that wakes late for a tick still finds it claimed."""

LOCAL_LEASE = math.inf
"""A run's lease in the in-process store: nothing else could take it, so it never runs out (and
needs no renewal) however long the run goes on or the process stalls."""

# Apps already told that their periodic tasks run on every replica for want of Redis.
_told: weakref.WeakSet[App] = weakref.WeakSet()


@dataclass(slots=True)
class _Lease:
    """The lease one run (or one catch-up) holds on its task."""

    owner: str
    lost: bool = False


class ScheduledWorker:
    """Runs one periodic task.

    Args:
        spec: The registration.
        app: Its app.
        handler: The handler with its middleware stack.
        clock: Where ticks are read and waited for.
        stopping: Set when shutdown begins.
        rng: Draws the jitter.
        stores: The run's stores: the fleet's schedule store when there is one and
            ``spec.fleet``, else the in-process one (the default).

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
        stores: Stores | None = None,
    ) -> None:
        self.spec = spec
        self.app = app
        self.handler = handler
        self.clock = clock
        self.stopping = stopping
        self.rng = rng or random.Random()
        self.log = WorkerLogger(logging.getLogger(app.name), spec.name)
        stores = stores or Stores.in_process(app.name)
        self.store: ScheduleStore
        self.store, self.fleet = stores.schedule_store(spec.fleet)
        """Where ticks are claimed; `fleet` is True when it is shared by every replica."""
        self.lease = spec.lease if self.fleet else LOCAL_LEASE
        self.runs = self.failures = self.skipped = 0
        self.elsewhere = self.unclaimed = self.lost = self.caught_up = 0
        self.last_tick: datetime | None = None
        self._stop = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None
        self._jobs = 0  # runs going on in this process
        self.health = StoreHealth(self.log)
        self._runs = Crew()
        self._running: set[Tick] = set()  # the ticks whose handler runs now
        self.exit_request: ProcessExit | None = None  # a handler raised SystemExit or Ctrl-C

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> str:
        """One line for `taskflow info`."""
        return f"runs {self.spec.schedule.describe()}, next at {self.next_tick().isoformat()}"

    @property
    def running(self) -> bool:
        """True while a run of this task is going on in this process."""
        return self._jobs > 0

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
        runs = self._runs = Crew()  # a run that ignores its cancellation is given up on
        try:
            async with asyncio.TaskGroup() as group:
                watcher = group.create_task(_raise_failure(runs), name=f"{self.name}:runs")
                if self.fleet:
                    runs.create_task(self._prepare(), name=f"{self.name}:catch-up")
                if self.spec.run_at_start:
                    self._launch(Tick(self.name, self.clock.now()))
                if not self._stop.is_set():  # else stop() came first: nothing to wait for
                    self._ticker = group.create_task(self._tick(), name=f"{self.name}:ticks")
                await self._stop.wait()
                self._end_ticks()
                await _drained(runs)
                watcher.cancel()
        finally:
            self._ticker = None
            await self._abandon(runs)
            self.log.info("← stopped scheduling")
        if self.exit_request is not None:
            raise self.exit_request

    async def stop(self) -> None:
        self._stop.set()
        self._end_ticks()

    def _end_ticks(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()  # it only ever waits on the clock; a running job is not touched

    async def _abandon(self, runs: Crew) -> None:
        """Cancel the runs still going; name those that ignore it, and go on without them."""
        if not await runs.close(ABANDON_GRACE):
            return
        for tick in sorted(self._running, key=lambda t: t.scheduled_at):
            self.log.error(
                "abandoned periodic task %s for tick %s: it ignored cancellation",
                self.name,
                tick.scheduled_at.isoformat(),
            )
        self._running.clear()

    async def _tick(self) -> None:
        """Wait for each tick (plus jitter) and launch its run; ends when cancelled by stop."""
        while True:
            tick = self.next_tick()
            await self.clock.sleep_until(tick + self._jitter())
            self.last_tick = tick
            self._launch(Tick(self.name, tick))

    def _launch(self, tick: Tick) -> None:
        self._runs.create_task(self._fire(tick), name=f"{self.name}:{tick.scheduled_at}")

    def _tell_mode(self) -> None:
        if self.fleet or not self.spec.fleet:
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

    async def _run(self, tick: Tick) -> str:
        """Run the job for `tick`; "ok", or "failed" (logged with its traceback)."""
        ctx = Context(self.app, self.name, self.log, self.stopping, tick=tick)
        started = time.perf_counter()
        self._running.add(tick)
        try:
            await self._call(tick, ctx)
        except asyncio.CancelledError:
            self.log.warning("cancelled run %s after %s", tick, _ms(started))
            raise
        except MemoryError:
            raise
        except STOPS_PROCESS as exc:
            self.failures += 1
            self._stop_process(tick, exc)
            return "failed"
        except BaseException:  # a BaseException of the user's too: the run failed, not the worker
            self.failures += 1
            self.log.exception("✗ %s failed after %s", tick, _ms(started))
            return "failed"
        finally:
            self._running.discard(tick)
        self.runs += 1
        return "ok"

    def _stop_process(self, tick: Tick, exc: BaseException) -> None:
        """The handler asked for the process to stop: launch no more ticks, let runs finish."""
        request = exit_request(exc)
        self.log.error(
            "periodic task %s raised %s for tick %s: stopping the process; the run failed",
            self.name,
            request.reason,
            tick.scheduled_at.isoformat(),
        )
        if self.exit_request is None:
            self.exit_request = request
        self._stop.set()
        self._end_ticks()

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
        self.log.info("✓ %s done in %s (%.0fms late)", tick, _ms(started), late * 1000)

    # -- across the fleet ------------------------------------------------------------------

    async def _fire(self, tick: Tick) -> None:
        """Claim `tick` and run it when it is ours and no run holds the lease."""
        lease = _Lease(new_owner())
        now = self.clock.now()
        ttl = self._claim_ttl(tick.scheduled_at, now)
        if ttl <= 0:
            if self.fleet:
                self.log.warning(
                    "⏭ %s skipped: woke %.0fs late, past its claim", tick, self._late(tick)
                )
                return
            ttl = CLAIM_MARGIN  # nobody else claims it: late is still worth running here
        try:
            found, holder = await self.store.claim(
                self.name,
                tick.scheduled_at,
                lease.owner,
                ttl=ttl,
                lease=self.lease,
                started=now,
                next_tick=self.next_tick(),
            )
        except StoreError as exc:
            self._unanswered(tick, exc)
            return
        self.health.answered("Redis answers again: ticks are claimed and run")
        if found is TickClaim.ELSEWHERE:
            self.elsewhere += 1
            self.log.debug("%s is claimed by %s", tick, holder)
        elif found is TickClaim.BUSY:
            self.skipped += 1
            where = f" on {holder}" if self.fleet else ""
            self.log.warning(
                "⏭ %s skipped: the previous run is still going%s (%d skipped so far)",
                tick,
                where,
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
        """Run `work` while renewing `lease`; if the lease is lost, `work` is cancelled.

        A store that fails to answer the renewal for a whole lease counts as lost: another
        replica may hold the lease by then.
        """

        def failed(exc: StoreError) -> None:
            self.log.warning("renewing the lease failed (%s); trying again", exc)

        def lost() -> None:
            lease.lost = True
            self.lost += 1
            self.log.error(
                "lost the lease on %s (%s): another replica may run it now, so this run is "
                "cancelled",
                self.name,
                lease.owner,
            )

        async def renew() -> bool:
            return await self.store.renew(self.name, lease.owner, self.lease)

        self._jobs += 1
        try:
            await hold(
                work,
                renew,
                self.lease,
                patience=self.lease,
                on_error=failed,
                on_lost=lost,
                clock=self.clock,
                name=self.name,
            )
        except LeaseLost:
            pass  # logged by `lost`, recorded by the run
        finally:
            self._jobs -= 1

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
        self.health.failed(
            "✗ %s not run: it could not be claimed (%s); no tick runs until Redis answers",
            tick,
            exc,
        )

    # -- catching up -----------------------------------------------------------------------

    async def _prepare(self) -> None:
        """Record the next tick; then run the ticks missed while every replica was down."""
        try:
            await self.store.set_next(self.name, self.next_tick())
            if self.spec.catch_up != "none":
                await self._catch_up()
        except StoreError as exc:
            self.log.error("catching up missed ticks failed: %s", exc)

    async def _catch_up(self) -> None:
        last = await self.store.last_run(self.name)
        # A task that never ran missed nothing.
        missed = [] if last is None else self._missed(last.tick, self.clock.now())
        if self.spec.catch_up == "latest":
            missed = missed[-1:]
        if not missed:
            self.log.info("↻ no missed tick to catch up")
            return
        lease = _Lease(new_owner())
        holder = await self.store.acquire(self.name, lease.owner, self.lease)
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
                    lease=self.lease,
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


async def _drained(runs: Crew) -> None:
    """Wait until every run of `runs` has ended."""
    while runs.tasks:
        await asyncio.wait(set(runs.tasks))


async def _raise_failure(runs: Crew) -> None:
    """Raise what a run raised (a bug: a handler's errors fail its run), as a TaskGroup would, so
    the worker crashes and is restarted."""
    raise await runs.failed()


def _ms(started: float) -> str:
    return f"{(time.perf_counter() - started) * 1000:.0f}ms"
