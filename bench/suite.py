"""The benchmark suite: taskflow beside raw aiokafka, FastStream and Faust, on one broker, one run.

    .venv/bin/python bench/suite.py            # the default run: about 6 minutes on 2 cores
    .venv/bin/python bench/suite.py --quick    # a smoke run: about 2 minutes

In order, it:

1. creates the contenders' virtual environments under bench/.venvs/ (FastStream and Faust, from
   bench/requirements-*.txt, with this interpreter's Python; kept for the next run while the
   requirements are unchanged). The raw loops and taskflow run in this interpreter's venv;
2. starts a Tansu broker and a private redis-server, each on a free port;
3. produces the records once (~200-byte JSON values, keys spread over 1,000 keys) into one
   4-partition topic;
4. runs every contender, each in its own process, round after round, interleaved (A B C … A B C …).
   Each process reads the topic from the start in a fresh group and handles the JSON of each
   record as a dict in a no-op handler. Contenders much slower than the rest read only the first
   ``--slow-messages`` records (FastStream with one commit per record: ``--ack-messages``);
5. after each run, checks what the group committed (every record read, for the contenders that
   promise at-least-once);
6. profiles taskflow's consume path (`kafka_profile`, one round under py-spy, one under cProfile);
7. measures the scheduler (`scheduler.py`) and the shutdown (`shutdown.py`);
8. prints the table and the targets, and writes them to bench/results/latest.{json,md};
9. stops everything it started, also when interrupted.

Ratios are per round against the raw ``getmany`` loop of the same round (then the median), so
they hold on a shared, noisy machine where absolute msg/s do not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # for tests._tansu; appended, so PYTHONPATH can pick the taskflow

import aiokafka  # noqa: E402
import shutdown  # noqa: E402
from kafka_contenders import PARTITIONS, TARGETS  # noqa: E402
from kafka_throughput import KEYS, flush_redis, load, make_values, produce, redis_py  # noqa: E402

import taskflow  # noqa: E402
from tests._redis_server import RedisServer  # noqa: E402
from tests._tansu import TansuBroker, committed_offsets, create_topic  # noqa: E402

VENVS = BENCH / ".venvs"
RESULTS = BENCH / "results"
AT_LEAST_ONCE = "at-least-once"
AT_MOST_ONCE = "at-most-once"


@dataclass(frozen=True, slots=True)
class Entrant:
    """A contender of the suite: where it runs, what it guarantees, what it is compared with."""

    name: str
    env: str  # "main" (this venv) or the name of a venv under bench/.venvs
    script: str
    what: str
    guarantee: str = AT_LEAST_ONCE
    counterpart: str = "raw"
    uses_redis: bool = False
    size: str = "all"  # "all" the records, the first "slow" ones, or the first "ack" ones


ENTRANTS = [
    Entrant("raw", "main", "child_kafka.py", "aiokafka getmany loop, explicit commits"),
    Entrant("raw-asyncfor", "main", "child_kafka.py", "aiokafka `async for`, explicit commits"),
    Entrant(
        "faststream",
        "faststream",
        "child_faststream.py",
        "FastStream KafkaBroker subscriber, default AckPolicy.ACK_FIRST (auto-commit)",
        guarantee=AT_MOST_ONCE,
    ),
    Entrant(
        "faststream-ack",
        "faststream",
        "child_faststream.py",
        "FastStream subscriber, AckPolicy.ACK (a commit after each record)",
        size="ack",
    ),
    Entrant("faust", "faust", "child_faust.py", "faust-streaming agent", size="slow"),
    Entrant(
        "raw-claim",
        "main",
        "child_kafka.py",
        "raw + one pipelined SET NX PX per record per batch, handling what it claimed",
        uses_redis=True,
        size="slow",  # as its taskflow pairs: a contender and its pair read the same records
    ),
    Entrant(
        "raw-redis",
        "main",
        "child_kafka.py",
        "raw + taskflow's Redis claims and completions, pipelined per batch",
        uses_redis=True,
        size="slow",
    ),
    Entrant("raw-tracing", "main", "child_kafka.py", "raw + one OpenTelemetry SDK span per record"),
    Entrant(
        "raw-all",
        "main",
        "child_kafka.py",
        "raw-redis + raw-tracing + metrics, a rate limiter and a timeout per record",
        uses_redis=True,
        size="slow",
    ),
    Entrant("taskflow", "main", "child_kafka.py", "taskflow, partition mode, no middleware"),
    Entrant(
        "taskflow-struct",
        "main",
        "child_kafka.py",
        "taskflow, partition mode, a handler taking a msgspec Struct",
    ),
    Entrant(
        "taskflow-batch",
        "main",
        "child_kafka.py",
        "taskflow, batch=500, a handler taking list[dict]",
    ),
    Entrant(
        "taskflow-key16",
        "main",
        "child_kafka.py",
        "taskflow, ordering='key', concurrency=16",
        size="slow",
    ),
    Entrant(
        "taskflow-idem",
        "main",
        "child_kafka.py",
        "taskflow, idempotent=True (Redis)",
        counterpart="raw-claim",
        uses_redis=True,
        size="slow",
    ),
    Entrant(
        "taskflow-idem-key",
        "main",
        "child_kafka.py",
        "taskflow, idempotent=True, idempotency_key= the id in the record's JSON (Redis)",
        counterpart="raw-claim",
        uses_redis=True,
        size="slow",
    ),
    Entrant(
        "taskflow-tracing",
        "main",
        "child_kafka.py",
        "taskflow, tracer_provider= an SDK TracerProvider",
        counterpart="raw-tracing",
    ),
    Entrant(
        "taskflow-all",
        "main",
        "child_kafka.py",
        "taskflow, idempotency + traces + metrics + rate limit + timeout",
        counterpart="raw-all",
        uses_redis=True,
        size="slow",
    ),
]
BY_NAME = {entrant.name: entrant for entrant in ENTRANTS}

RSS_TARGET = ("taskflow", "raw", 1.5)
SCHEDULER_P99_MS = 5.0
IDLE_SIGTERM_S = 1.0


# -- virtual environments ----------------------------------------------------------------------


def _base_python() -> str:
    """The interpreter this venv was made from: the contenders' venvs use the same Python."""
    return getattr(sys, "_base_executable", sys.executable)


def ensure_venv(name: str, log: Any) -> tuple[str | None, str]:
    """This venv's python, and its installed requirements; (None, why) when it cannot be made."""
    requirements = BENCH / f"requirements-{name}.txt"
    wanted = requirements.read_text(encoding="utf-8")
    home = VENVS / name
    python = home / "bin" / "python"
    stamp = home / ".bench-requirements"
    if python.exists() and stamp.exists() and stamp.read_text(encoding="utf-8") == wanted:
        return str(python), _pinned(wanted)
    log(f"creating {home} ({_pinned(wanted)})")
    shutil.rmtree(home, ignore_errors=True)
    steps = [
        [_base_python(), "-m", "venv", str(home)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r",
         str(requirements)],
    ]  # fmt: skip
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return None, f"did not run: {' '.join(step[1:4])} failed ({exc})"
        if done.returncode != 0:
            errors = [line for line in done.stderr.splitlines() if "ERROR" in line]
            why = (errors or done.stderr.strip().splitlines() or ["no output"])[-1]
            return None, f"did not run: {' '.join(step[1:4])} failed: {why}"
    stamp.write_text(wanted, encoding="utf-8")
    return str(python), _pinned(wanted)


def _pinned(requirements: str) -> str:
    lines = [line.strip() for line in requirements.splitlines()]
    return ", ".join(line for line in lines if line and not line.startswith("#"))


# -- one run of one contender ------------------------------------------------------------------


@dataclass
class Run:
    """One run of one contender (a process)."""

    contender: str
    round: int
    records: int = 0
    rate: float = 0.0  # records per second, first handled to last handled
    first_record: float = 0.0  # process start to first record handled
    rss_mib: float = 0.0
    handled: int = 0  # what the process handled in all, `records` and those after it
    committed: int = 0  # the sum of the group's committed offsets afterwards
    version: str = ""
    error: str = ""


@dataclass
class Broker:
    """The run's shared set-up."""

    bootstrap: str
    redis_url: str
    topic: str
    ends: dict[int, int]
    limits: dict[str, int]
    pythons: dict[str, str]
    children: set[asyncio.subprocess.Process] = field(default_factory=set)

    def expected(self, entrant: Entrant) -> int:
        return min(sum(self.ends.values()), self.limits[entrant.size])


RESULT_LINE = re.compile(r"RESULT (\{.*\})")


async def run_once(broker: Broker, entrant: Entrant, number: int, extra: list[str]) -> Run:
    """Start the contender's process, wait for its RESULT line, check its group's commits."""
    run = Run(entrant.name, number)
    expected = broker.expected(entrant)
    if entrant.uses_redis:
        await flush_redis(broker.redis_url)
    group = f"{entrant.name}-{uuid.uuid4().hex[:8]}"
    timeout = 120 + expected / 500
    command = [
        broker.pythons[entrant.env], str(BENCH / entrant.script), entrant.name,
        "--bootstrap", broker.bootstrap, "--topic", broker.topic, "--group", group,
        "--expected", str(expected), "--ends", json.dumps(broker.ends),
        "--redis", broker.redis_url, "--timeout", str(timeout), *extra,
    ]  # fmt: skip
    env = dict(os.environ)
    if entrant.env != "main":
        env.pop("PYTHONPATH", None)  # another venv: nothing of this one leaks in
    spawned = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *command,
        cwd=BENCH,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    broker.children.add(proc)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout + 30)
    except TimeoutError:
        run.error = f"no result within {timeout + 30:.0f}s"
        return run
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        broker.children.discard(proc)
    match = RESULT_LINE.search(out.decode(errors="replace"))
    if match is None:
        lines = err.decode(errors="replace").strip().splitlines() or ["no output"]
        run.error = f"exit code {proc.returncode}: {lines[-1][:200]}"
        return run
    result = json.loads(match.group(1))
    if "profile" in result:
        run.version = result["profile"]
        return run
    run.records, run.handled = expected, result["handled"]
    if result["handled"] < expected or not result["last"]:
        run.error = f"handled {result['handled']} of {expected}"
        return run
    run.rate = expected / (result["last"] - result["first"])
    run.first_record = result["first"] - spawned
    run.rss_mib = result["rss_kib"] / 1024
    run.version = result.get("version", "")
    committed = await committed_offsets(broker.bootstrap, group, broker.topic, PARTITIONS)
    run.committed = sum(offset or 0 for offset in committed.values())
    if entrant.guarantee == AT_LEAST_ONCE and run.committed > result["handled"]:
        # Each partition's committed offset must not pass what was handled: summed, neither.
        run.error = f"committed {run.committed:,} after handling only {result['handled']:,}"
    elif entrant.env == "main":  # the raw loops and taskflow commit all they handled as they stop
        whole = expected == sum(broker.ends.values())
        if (whole and committed != broker.ends) or run.committed < expected:
            run.error = f"committed {committed} at exit, after handling {expected:,}"
    return run


def run_line(number: int, run: Run) -> str:
    if run.error:
        return f"  round {number} {run.contender:<17} FAILED: {run.error}"
    return (
        f"  round {number} {run.contender:<17}{run.rate:>10,.0f} msg/s over {run.records:>7,} "
        f"records, first record after {run.first_record:5.2f}s, peak RSS {run.rss_mib:5.1f} MiB, "
        f"committed {run.committed:,}"
    )


# -- the table ---------------------------------------------------------------------------------


def _ratios(runs: list[Run], base: list[Run]) -> list[float]:
    by_round = {run.round: run for run in base if not run.error}
    return [
        run.rate / by_round[run.round].rate
        for run in runs
        if not run.error and run.round in by_round
    ]


@dataclass
class Row:
    """One contender's line of the table."""

    entrant: Entrant
    records: int = 0
    rounds: int = 0
    median: float = 0.0
    low: float = 0.0
    high: float = 0.0
    vs_raw: list[float] = field(default_factory=list)
    vs_pair: list[float] = field(default_factory=list)
    added_us: float | None = None  # µs per record over its counterpart (medians)
    first_record: float = 0.0
    rss_mib: float = 0.0
    rss_vs_raw: float | None = None
    committed: float = 0.0  # the least share of what it handled that a run had committed at exit
    version: str = ""
    error: str = ""


def rows(results: dict[str, list[Run]]) -> list[Row]:
    out = []
    raw_runs = results.get("raw", [])
    for name, runs in results.items():
        entrant = BY_NAME[name]
        good = [run for run in runs if not run.error]
        row = Row(entrant, version=next((run.version for run in good if run.version), ""))
        if not good:
            row.error = runs[0].error if runs else "did not run"
            out.append(row)
            continue
        rates = [run.rate for run in good]
        row.records, row.rounds = good[0].records, len(good)
        row.median, row.low, row.high = statistics.median(rates), min(rates), max(rates)
        row.first_record = statistics.median(run.first_record for run in good)
        row.rss_mib = statistics.median(run.rss_mib for run in good)
        row.committed = min(run.committed / run.handled for run in good)
        failed = [run for run in runs if run.error]
        if failed:
            row.error = f"{len(failed)} round(s) failed: {failed[0].error}"
        if raw_runs and name != "raw":
            row.vs_raw = _ratios(runs, raw_runs)
            raw_good = [run.rss_mib for run in raw_runs if not run.error]
            if raw_good:
                row.rss_vs_raw = row.rss_mib / statistics.median(raw_good)
        pair = results.get(entrant.counterpart, [])
        if entrant.counterpart not in (name, "raw") and pair:
            row.vs_pair = _ratios(runs, pair)
        if entrant.counterpart != name and pair:
            pair_rates = [run.rate for run in pair if not run.error]
            if pair_rates:
                row.added_us = 1e6 / row.median - 1e6 / statistics.median(pair_rates)
        out.append(row)
    return out


def _cell(ratios: list[float]) -> str:
    if not ratios:
        return ""
    return f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"


def _committed(row: Row) -> str:
    return "all" if row.committed >= 1 else f"{100 * row.committed:.0f}%"


def text_table(table: list[Row]) -> str:
    lines = [
        f"{'contender':<19}{'delivery':<14}{'records':>8}{'msg/s':>9}{'min-max':>17}  "
        f"{'x raw (range)':<19}{'x its raw pair (range)':<35}{'+µs/msg':>8}{'1st rec':>8}"
        f"{'RSS MiB':>14}{'committed':>10}"
    ]
    for row in table:
        name = row.entrant.name
        if row.rounds == 0:
            lines.append(f"{name:<19}{row.entrant.guarantee:<14}{row.error}")
            continue
        pair = f"{_cell(row.vs_pair)} {row.entrant.counterpart}" if row.vs_pair else ""
        added = f"{row.added_us:+.2f}" if row.added_us is not None else ""
        rss = f"{row.rss_mib:.1f}" + (f" {row.rss_vs_raw:.2f}x" if row.rss_vs_raw else "")
        lines.append(
            f"{name:<19}{row.entrant.guarantee:<14}{row.records:>8,}{row.median:>9,.0f}"
            f"{f'{row.low:,.0f}-{row.high:,.0f}':>17}  {_cell(row.vs_raw) or '1.00x':<19}"
            f"{pair:<35}{added:>8}{f'{row.first_record:.2f}s':>8}{rss:>14}"
            f"{_committed(row):>10}" + (f"  ({row.error})" if row.error else "")
        )
    return "\n".join(lines)


def markdown_table(table: list[Row]) -> str:
    lines = [
        "| contender | delivery | records read | msg/s, median (min-max) | x raw getmany "
        "| x its raw pair | µs/msg added | first record | peak RSS | committed at exit |",
        "| --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for row in table:
        name = f"`{row.entrant.name}`"
        if row.rounds == 0:
            lines.append(f"| {name} | {row.entrant.guarantee} | | {row.error} | | | | | | |")
            continue
        pair = f"{_cell(row.vs_pair)} `{row.entrant.counterpart}`" if row.vs_pair else ""
        added = ""
        if row.added_us is not None:
            added = f"{row.added_us:+.1f} (vs `{row.entrant.counterpart}`)"
        rss = f"{row.rss_mib:.0f} MiB" + (f" ({row.rss_vs_raw:.2f}x)" if row.rss_vs_raw else "")
        note = f" ({row.error})" if row.error else ""
        lines.append(
            f"| {name} | {row.entrant.guarantee} | {row.records:,} | {row.median:,.0f} "
            f"({row.low:,.0f}-{row.high:,.0f}){note} | {_cell(row.vs_raw) or '1.00x'} | {pair} "
            f"| {added} | {row.first_record:.2f} s | {rss} | {_committed(row)} |"
        )
    return "\n".join(lines)


# -- the targets -------------------------------------------------------------------------------


def verdicts(
    results: dict[str, list[Run]],
    scheduler: list[dict[str, Any]],
    stops: dict[str, dict[str, Any]],
) -> list[str]:
    out = []
    for name, base, target in TARGETS:
        ratios = _ratios(results.get(name, []), results.get(base, []))
        if not ratios:
            out.append(f"{name} / {base} ≥ {target:.2f}x: not measured")
            continue
        ratio = statistics.median(ratios)
        verdict = "met" if ratio >= target else f"NOT met ({target - ratio:.2f}x short)"
        out.append(f"{name} / {base} = {ratio:.2f}x (target ≥ {target:.2f}x): {verdict}")
    name, base, limit = RSS_TARGET
    mine = [run.rss_mib for run in results.get(name, []) if not run.error]
    theirs = [run.rss_mib for run in results.get(base, []) if not run.error]
    if mine and theirs:
        ratio = statistics.median(mine) / statistics.median(theirs)
        verdict = "met" if ratio <= limit else f"NOT met ({ratio - limit:.2f}x over)"
        out.append(f"peak RSS {name} / {base} = {ratio:.2f}x (target ≤ {limit:.1f}x): {verdict}")
    for other in ("faststream-ack", "faust"):
        ratios = _ratios(results.get("taskflow", []), results.get(other, []))
        if ratios:
            out.append(
                f"taskflow / {other} (at-least-once) = {statistics.median(ratios):.1f}x "
                "(taskflow should be the fastest at-least-once framework)"
            )
    for figure in scheduler:
        if figure["measurement"] == "lateness" and figure["tasks"] == 100:
            p99 = figure["p99_ms"]
            if figure.get("gc_freeze"):
                out.append(
                    f"(experiment) scheduler p99 lateness, 100 tasks, gc.freeze() once started: "
                    f"{p99:.2f} ms, full GC pauses {figure.get('gc_full_ms')} ms"
                )
                continue
            verdict = (
                "met"
                if p99 <= SCHEDULER_P99_MS
                else f"NOT met ({p99 - SCHEDULER_P99_MS:.1f} ms over)"
            )
            out.append(
                f"scheduler p99 lateness, 100 tasks, {figure['seconds']:g} s = {p99:.2f} ms "
                f"(target ≤ {SCHEDULER_P99_MS:g} ms): {verdict}; full GC pauses "
                f"{figure.get('gc_full_ms')} ms"
            )
        if figure["measurement"] == "drift":
            bad = figure["off_grid"] + figure["started_late"]
            out.append(
                f"drift after {figure['ticks']} ticks ({figure['step']}): {bad} off the grid "
                f"(target 0): {'met' if bad == 0 else 'NOT met'}"
            )
    for figure in scheduler:
        if figure["measurement"] == "lateness" and figure["tasks"] == 1:
            out.append(
                f"(figure) scheduler lateness, 1 task, {figure['seconds']:g} s: p50 "
                f"{figure['p50_ms']:.2f} ms, p99 {figure['p99_ms']:.2f} ms, max "
                f"{figure['max_ms']:.2f} ms"
            )
    for case in ("idle, memory", "idle, kafka"):
        if case in stops:
            worst = stops[case]["max_s"]
            verdict = "met" if worst < IDLE_SIGTERM_S else "NOT met"
            out.append(
                f"SIGTERM to exit, {case}: max {worst:.3f}s (target < {IDLE_SIGTERM_S:g}s): "
                f"{verdict}"
            )
    if (busy := stops.get("in-flight, kafka")) is not None:
        out.append(
            f"(figure) SIGTERM to exit with 1,000 in flight (each handler sleeping 1 s): median "
            f"{busy['median_s']:.3f}s, {busy['after_work_median_s']:.3f}s after the last handler "
            f"ended; finished {busy['finished']}, all committed: {busy['committed_all']}, exit "
            f"codes {busy['exit_codes']}"
        )
    return out


# -- scheduler, shutdown, profile --------------------------------------------------------------


async def scheduler_figures(seconds: float, log: Any) -> list[dict[str, Any]]:
    command = [sys.executable, str(BENCH / "scheduler.py"), "all", "--seconds", str(seconds)]
    proc = await asyncio.create_subprocess_exec(
        *command, cwd=BENCH, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 2 * seconds + 120)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    for line in err.decode(errors="replace").splitlines():
        log(f"  {line}")
    return [json.loads(match.group(1)) for match in RESULT_LINE.finditer(out.decode())]


async def profile_taskflow(broker: Broker, names: list[str], results: dict[str, list[Run]]) -> None:
    medians = {
        name: statistics.median(run.rate for run in runs if not run.error)
        for name, runs in results.items()
        if any(not run.error for run in runs)
    }
    for name in names:
        run = await run_once(broker, BY_NAME[name], 0, ["--profile", json.dumps(medians)])
        print(f"  {name}: {run.error or f'written to {run.version}'}", flush=True)


# -- versions and the machine ------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": cpus,
        "cpu": model,
        "arch": platform.machine(),
        "kernel": platform.release(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30),
    }


def taskflow_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        head = ""
    return head or "unknown"


# -- main --------------------------------------------------------------------------------------


def limits(args: argparse.Namespace) -> dict[str, int]:
    return {"all": args.messages, "slow": args.slow_messages, "ack": args.ack_messages}


async def main_async(args: argparse.Namespace) -> int:
    began = time.monotonic()
    print(f"taskflow {taskflow_commit()} ({Path(taskflow.__file__).parent})", flush=True)
    print(f"python {platform.python_version()}, {machine()}", flush=True)
    print(load(), flush=True)
    wanted = [BY_NAME[name] for name in args.contenders]
    pythons = {"main": sys.executable}
    installed = {"main": f"aiokafka {aiokafka.__version__}, {redis_py()}"}
    print(installed["main"], flush=True)
    missing: dict[str, str] = {}
    for env in sorted({entrant.env for entrant in wanted} - {"main"}):
        python, note = ensure_venv(env, print)
        if python is None:
            missing[env] = note
        else:
            pythons[env], installed[env] = python, note
    results: dict[str, list[Run]] = {entrant.name: [] for entrant in wanted}
    runnable = [entrant for entrant in wanted if entrant.env not in missing]
    for entrant in wanted:
        if entrant.env in missing:
            results[entrant.name].append(Run(entrant.name, 0, error=missing[entrant.env]))
    scheduler: list[dict[str, Any]] = []
    stops: dict[str, dict[str, Any]] = {}
    with TansuBroker() as tansu, RedisServer() as redis_server:
        topic = f"bench-{uuid.uuid4().hex[:6]}"
        await create_topic(tansu.bootstrap, topic, PARTITIONS)
        values = make_values(args.messages)
        ends = await produce(tansu.bootstrap, topic, values)
        print(
            f"produced {sum(ends.values()):,} records (~{len(values[0])} B JSON, {KEYS} keys, "
            f"{PARTITIONS} partitions) on Tansu at {tansu.bootstrap}; redis at {redis_server.url}",
            flush=True,
        )
        del values
        broker = Broker(tansu.bootstrap, redis_server.url, topic, ends, limits(args), pythons)
        try:
            for number in range(1, args.rounds + 1):
                print(f"round {number} ({load()})", flush=True)
                for entrant in runnable:
                    run = await run_once(broker, entrant, number, [])
                    results[entrant.name].append(run)
                    print(run_line(number, run), flush=True)
            table = rows(results)
            print("\n" + text_table(table) + "\n", flush=True)
            if args.profile:
                print("profiling (a round under py-spy, one under cProfile, per contender)")
                await profile_taskflow(broker, args.profile, results)
            if args.scheduler_seconds > 0:
                print(f"scheduler ({args.scheduler_seconds:g} s per lateness run)", flush=True)
                scheduler = await scheduler_figures(args.scheduler_seconds, print)
            if args.shutdown_rounds > 0:
                print("shutdown (SIGTERM to exit)", flush=True)
                figures = await shutdown.measure(tansu.bootstrap, args.shutdown_rounds, print)
                stops = figures.summary()
        finally:
            for proc in list(broker.children):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
    took = time.monotonic() - began
    lines = verdicts(results, scheduler, stops)
    print(text_table(rows(results)))
    print("\n".join(["", *lines, "", f"{load()}; the suite took {took:.0f}s"]), flush=True)
    write_results(args, results, scheduler, stops, lines, installed, took)
    return 0


def write_results(
    args: argparse.Namespace,
    results: dict[str, list[Run]],
    scheduler: list[dict[str, Any]],
    stops: dict[str, dict[str, Any]],
    lines: list[str],
    installed: dict[str, str],
    took: float,
) -> None:
    RESULTS.mkdir(exist_ok=True)
    table = rows(results)
    document = {
        "date": datetime.date.today().isoformat(),
        "taskflow": taskflow_commit(),
        "python": platform.python_version(),
        "installed": installed,
        "machine": machine(),
        "load_after": os.getloadavg(),
        "arguments": dict(vars(args)),
        "seconds": took,
        "runs": {name: [asdict(run) for run in runs] for name, runs in results.items()},
        "scheduler": scheduler,
        "shutdown": stops,
        "verdicts": lines,
    }
    (RESULTS / "latest.json").write_text(json.dumps(document, indent=2), encoding="utf-8")
    markdown = [markdown_table(table), "", *(f"- {line}" for line in lines)]
    (RESULTS / "latest.md").write_text("\n".join(markdown) + "\n", encoding="utf-8")
    print(f"results written to {RESULTS}/latest.json and latest.md")


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in BY_NAME]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown contender(s) {', '.join(unknown)}; pick from {', '.join(BY_NAME)}"
        )
    return names


# The run's sizes: by default, and with --quick (a flag given explicitly wins over both).
DEFAULTS: dict[str, Any] = {
    "messages": 200_000,
    "rounds": 3,
    "slow_messages": 50_000,
    "ack_messages": 20_000,
    "profile": ["taskflow", "taskflow-key16"],
    "scheduler_seconds": 20.0,
    "shutdown_rounds": 3,
}
QUICK: dict[str, Any] = {
    "messages": 50_000,
    "rounds": 2,
    "slow_messages": 10_000,
    "ack_messages": 5_000,
    "profile": [],
    "scheduler_seconds": 5.0,
    "shutdown_rounds": 1,
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, help="records in the topic (default 200,000)")
    parser.add_argument("--rounds", type=int, help="rounds per contender (default 3)")
    parser.add_argument(
        "--slow-messages",
        type=int,
        help="records read by the slow contenders (Redis, key mode, Faust; default 50,000)",
    )
    parser.add_argument(
        "--ack-messages",
        type=int,
        help="records read by FastStream with AckPolicy.ACK (default 20,000)",
    )
    parser.add_argument(
        "--contenders",
        type=_names,
        default=list(BY_NAME),
        help=f"comma-separated, run in this order each round (default: {','.join(BY_NAME)})",
    )
    parser.add_argument(
        "--profile",
        type=_names,
        help="taskflow contenders to profile after the rounds (default: taskflow,taskflow-key16)",
    )
    parser.add_argument("--no-profile", dest="profile", action="store_const", const=[])
    parser.add_argument(
        "--scheduler-seconds",
        type=float,
        help="length of each scheduler lateness run, 0 to skip (default 20; the docs use 60)",
    )
    parser.add_argument(
        "--shutdown-rounds", type=int, help="SIGTERMs per shutdown case, 0 to skip (default 3)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 50,000 records, 2 rounds, 10,000 slow and 5,000 ack records, "
        "5 s scheduler runs, 1 shutdown round, no profile (flags given as well win)",
    )
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if "raw" not in args.contenders:
        parser.error("the contenders must include raw: every ratio is to it")
    return args


def main() -> None:
    args = parse()
    # SIGTERM unwinds like Ctrl-C: the broker, Redis and every contender process are stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        sys.exit(asyncio.run(main_async(args)))
    except KeyboardInterrupt:
        print("interrupted: everything the suite started is stopped", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
