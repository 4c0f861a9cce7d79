"""Scheduler figures: how late periodic runs start on the wall clock, and whether ticks drift.

``lateness``: an App with N tasks, each ``@app.every(seconds=1)`` (``fleet=False``, memory broker,
no Redis), runs on the real clock for S seconds. Each run records, as its handler starts, its
lateness: the wall clock (``time.time()``) minus the tick it belongs to (``ctx.scheduled_at``).
It reports the lateness p50/p99/max over every run, the ticks missed (a task's ticks must be
consecutive seconds), ticks off the epoch-aligned one-second grid, the drift (the median
lateness of the last 10 ticks minus that of the first 10), the ticks whose earliest run woke over
5 ms late (the whole event loop was held up), and each full garbage collection's pause. ``all``
runs 1 task, 100 tasks, and 100 tasks again with ``gc.freeze()`` called once the app runs (an
experiment: it shows what freezing the start-up heap would do to the full collections' pauses).

``drift``: one ``every(seconds=1)`` task on a `ManualClock` that starts off the grid
(00:00:00.3), driven through 1,000 ticks at once, twice: jumping to each wake-up
(``advance_to_next``), then in uneven steps of 0.37 s. Every run must belong to the next grid
second (``scheduled_at`` exactly ``first + n`` seconds, whole seconds since the epoch) and start
exactly at it; it reports how many did not, and the largest distance from the grid.

    .venv/bin/python bench/scheduler.py lateness --tasks 100 --seconds 60 [--gc-freeze]
    .venv/bin/python bench/scheduler.py drift --ticks 1000
    .venv/bin/python bench/scheduler.py all --seconds 60      # both, as the suite runs them

Each prints one line ``RESULT {json}`` per measurement (and a readable line before it).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from taskflow import App, Context
from taskflow.runner import open_runtime
from taskflow.testing import ManualClock, TestClient

RESULT = "RESULT "
GRID = timedelta(seconds=1)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


# -- lateness on the wall clock ----------------------------------------------------------------


def _periodic_app(tasks: int, record: dict[str, list[tuple[datetime, float]]]) -> App:
    app = App("sched-bench", broker="memory://")

    def make(name: str) -> Any:
        runs = record[name] = []

        async def tick(ctx: Context) -> None:
            now = time.time()
            assert ctx.scheduled_at is not None
            runs.append((ctx.scheduled_at, now - ctx.scheduled_at.timestamp()))

        return tick

    for number in range(tasks):
        name = f"task{number:03d}"
        app.add_schedule(make(name), GRID, name=name, fleet=False)
    return app


class GcPauses:
    """The full (generation 2) garbage collections while the context is open, in ms each."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._started = 0.0

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append(1000 * (time.perf_counter() - self._started))


async def lateness(tasks: int, seconds: float, *, freeze: bool = False) -> dict[str, Any]:
    """Run `tasks` one-second tasks for `seconds` on the real clock; the lateness figures.

    With `freeze`, `gc.freeze()` is called once the app runs: every object made at start moves
    to the permanent generation, so a full collection no longer walks them. `taskflow run`
    (`taskflow.runner.serve`) does this; an app run through `open_runtime()` in a process of its own
    does not, which is what the run without `freeze` shows.
    """
    record: dict[str, list[tuple[datetime, float]]] = {}
    app = _periodic_app(tasks, record)
    with GcPauses() as collections:
        async with open_runtime(app) as runtime:
            run = asyncio.create_task(runtime.manager.run())
            try:
                if freeze:
                    await asyncio.sleep(0.2)  # the workers have started
                    gc.freeze()
                await asyncio.sleep(seconds)
            finally:
                runtime.manager.request_stop("benchmark done")
                report = await run
                gc.unfreeze()
    late = [seconds_late for runs in record.values() for _, seconds_late in runs]
    missed = off_grid = 0
    first_of_tick: dict[datetime, float] = {}
    for runs in record.values():
        ticks = [tick for tick, _ in runs]
        missed += sum(round((b - a) / GRID) - 1 for a, b in itertools.pairwise(ticks))
        off_grid += sum(1 for tick in ticks if tick.timestamp() % 1)
        for tick, seconds_late in runs:
            first_of_tick[tick] = min(seconds_late, first_of_tick.get(tick, seconds_late))
    firsts = [statistics.median(s for _, s in runs[:10]) for runs in record.values() if runs]
    lasts = [statistics.median(s for _, s in runs[-10:]) for runs in record.values() if runs]
    return {
        "measurement": "lateness",
        "tasks": tasks,
        "seconds": seconds,
        "gc_freeze": freeze,
        "runs": len(late),
        "p50_ms": 1000 * percentile(late, 50),
        "p99_ms": 1000 * percentile(late, 99),
        "max_ms": 1000 * max(late),
        "min_ms": 1000 * min(late),
        "missed_ticks": missed,
        "off_grid": off_grid,
        "drift_ms": 1000 * (statistics.median(lasts) - statistics.median(firsts)),
        # ticks whose earliest run was over 5 ms late: the whole loop woke late (a pause)
        "late_ticks": sum(1 for first in first_of_tick.values() if first > 0.005),
        "ticks": len(first_of_tick),
        "gc_full_ms": [round(pause, 1) for pause in collections.pauses],
        "clean": report.clean,
    }


# -- drift on a driven clock -------------------------------------------------------------------


async def drift(ticks: int, step: float | None) -> dict[str, Any]:
    """Drive one one-second task through `ticks` ticks on a ManualClock; check every fire time.

    `step` None jumps to each wake-up; a number advances the clock by that many seconds at a time.
    """
    start = datetime(2026, 1, 1, 0, 0, 0, 300_000, tzinfo=UTC)  # off the grid on purpose
    clock = ManualClock(start)
    app = App("drift-bench", clock=clock)
    fired: list[tuple[datetime, datetime]] = []

    @app.every(seconds=1, fleet=False)
    async def tick(ctx: Context) -> None:
        assert ctx.scheduled_at is not None
        fired.append((ctx.scheduled_at, clock.now()))

    async with TestClient(app):
        await clock.wait_for_sleepers(1)
        while len(fired) < ticks:
            if step is None:
                await clock.advance_to_next()
            else:
                await clock.advance(step)
    fired = fired[:ticks]
    first = datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)  # the first grid second after the start
    off = [abs(scheduled - (first + n * GRID)) for n, (scheduled, _) in enumerate(fired)]
    late = [at - scheduled for scheduled, at in fired]
    return {
        "measurement": "drift",
        "ticks": len(fired),
        "step": "each wake-up" if step is None else f"steps of {step:g} s",
        "off_grid": sum(1 for x in off if x),
        "max_off_us": max(off) / timedelta(microseconds=1),
        "started_late": sum(1 for x in late if x),
        "max_late_us": max(late) / timedelta(microseconds=1),
        "last_tick": fired[-1][0].isoformat(),
        "expected_last_tick": (first + (ticks - 1) * GRID).isoformat(),
    }


# -- main --------------------------------------------------------------------------------------


def _print(result: dict[str, Any]) -> None:
    if result["measurement"] == "lateness":
        line = (
            f"lateness, {result['tasks']} task(s) every 1 s for {result['seconds']:g} s: "
            f"{result['runs']} runs, p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
            f"max {result['max_ms']:.2f} ms; {result['missed_ticks']} ticks missed, "
            f"{result['off_grid']} off the grid, drift {result['drift_ms']:+.2f} ms; "
            f"{result['late_ticks']} of {result['ticks']} ticks woke over 5 ms late; full GCs "
            f"{result['gc_full_ms']} ms"
            + (" (gc.freeze() after start)" if result["gc_freeze"] else "")
        )
    else:
        line = (
            f"drift, {result['ticks']} ticks on a ManualClock ({result['step']}): "
            f"{result['off_grid']} off the grid (max {result['max_off_us']:.0f} µs), "
            f"{result['started_late']} started after their tick, last tick "
            f"{result['last_tick']} (expected {result['expected_last_tick']})"
        )
    print(line, file=sys.stderr, flush=True)
    print(RESULT + json.dumps(result), flush=True)


async def main_async(args: argparse.Namespace) -> None:
    if args.what in ("drift", "all"):
        _print(await drift(args.ticks, None))
        _print(await drift(args.ticks, 0.37))
    if args.what == "lateness":
        _print(await lateness(args.tasks, args.seconds, freeze=args.gc_freeze))
    if args.what == "all":
        _print(await lateness(1, args.seconds))
        _print(await lateness(100, args.seconds))
        _print(await lateness(100, args.seconds, freeze=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["lateness", "drift", "all"])
    parser.add_argument("--tasks", type=int, default=100, help="tasks, for lateness")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long, for lateness")
    parser.add_argument("--ticks", type=int, default=1000, help="ticks, for drift")
    parser.add_argument(
        "--gc-freeze", action="store_true", help="call gc.freeze() once the app runs (lateness)"
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
