"""Kafka throughput: taskflow's consumer against a raw aiokafka loop, on one local Tansu broker.

Each round pre-produces N records (~200-byte JSON, keys spread over 1,000 keys) into a fresh
4-partition topic, then one contender consumes that topic from the start in a fresh group:

* ``raw``: an ``AIOKafkaConsumer`` ``getmany`` loop (max_poll_records 500, auto-commit off) calling
  an async no-op handler per record, committing ``{tp: last + 1}`` per partition at most once a
  second (taskflow's default ``commit_interval``) and once at the end;
* ``taskflow``: an App with one ``async def handler(msg: Message)`` consumer (partition ordering)
  on ``kafka://``, run in-process with ``taskflow.runner.running`` + ``manager.run()``, stopped with
  ``manager.request_stop()`` once every partition's end offset is committed.

Both use the same consumer settings and the same handler body. Rounds are interleaved (raw,
taskflow, raw, …). Per round: msg/s from the first record handed to a handler to the last one
handled, and to the final commit; time from starting the contender to its first record. Then the
taskflow contender runs once more under cProfile; the report goes to ``bench/profile-consume.txt``.

    .venv/bin/python bench/kafka_throughput.py [--messages 200000] [--rounds 3] [--no-profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import importlib.metadata
import io
import json
import logging
import os
import platform
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # for tests._tansu; appended, so PYTHONPATH can pick the taskflow

import aiokafka  # noqa: E402
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402

import taskflow  # noqa: E402
from taskflow import App, Message  # noqa: E402
from taskflow.runner import running  # noqa: E402
from tests._tansu import (  # noqa: E402
    TansuBroker,
    committed_offsets,
    create_topic,
    resolve_tansu_binary,
)

PARTITIONS = 4
KEYS = 1000
MAX_RECORDS = 500  # taskflow's ConsumerOptions default, given to raw as max_poll_records
COMMIT_INTERVAL = 1.0  # taskflow's default App(commit_interval=...)
FETCH_TIMEOUT_MS = 500  # taskflow's FETCH_TIMEOUT
# Shared by both contenders. Tansu holds a join for max(1 s, session_timeout / 2).
CONSUMER_SETTINGS: dict[str, Any] = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 300}
PROFILE_PATH = ROOT / "bench" / "profile-consume.txt"


@dataclass
class Result:
    contender: str
    messages: int
    startup: float  # contender start -> first record handled
    handle_s: float  # first record handled -> last record handled
    commit_s: float  # first record handled -> final commit done
    group: str = ""

    @property
    def rate(self) -> float:
        return self.messages / self.handle_s

    @property
    def rate_committed(self) -> float:
        return self.messages / self.commit_s


class Counter:
    """The shared handler body: count, and stamp the first and last record."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.first = 0.0
        self.last = 0.0
        self.done = asyncio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count == 1:
            self.first = time.perf_counter()
        if self.count == self.expected:
            self.last = time.perf_counter()
            self.done.set()


# -- producing ---------------------------------------------------------------------------------


def make_values(n: int) -> list[bytes]:
    pad = "x" * 150
    return [
        json.dumps(
            {"id": i, "customer": f"c-{i % KEYS:04d}", "amount": i % 9973, "note": pad},
            separators=(",", ":"),
        ).encode()
        for i in range(n)
    ]


async def produce(bootstrap: str, topic: str, values: list[bytes]) -> dict[int, int]:
    """Send every value without waiting per record; return the end offset of each partition."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=False,
        linger_ms=20,
        max_batch_size=1_000_000,
        max_request_size=4_000_000,
    )
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, key=f"k-{i % KEYS}".encode())
            for i, value in enumerate(values)
        ]
        await producer.flush()
        ends: dict[int, int] = {}
        for future in futures:
            meta = future.result()
            if meta.offset + 1 > ends.get(meta.partition, 0):
                ends[meta.partition] = meta.offset + 1
        return ends
    finally:
        await producer.stop()


async def drop_topic(bootstrap: str, topic: str) -> None:
    """Free the broker's memory between rounds; best effort."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    with contextlib.suppress(Exception):
        async with asyncio.timeout(10):
            await admin.start()
            await admin.delete_topics([topic])
    with contextlib.suppress(Exception):
        await admin.close()


# -- contenders --------------------------------------------------------------------------------


async def run_raw(bootstrap: str, topic: str, ends: dict[int, int]) -> Result:
    expected = sum(ends.values())
    counter = Counter(expected)

    async def handler(record: Any) -> None:
        counter.hit()

    group = f"raw-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=MAX_RECORDS,
        **CONSUMER_SETTINGS,
    )
    await consumer.start()
    try:
        pending: dict[TopicPartition, int] = {}
        last_commit = time.monotonic()
        while counter.count < expected:
            batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS)
            for tp, records in batches.items():
                for record in records:
                    await handler(record)
                pending[tp] = records[-1].offset + 1
            if pending and time.monotonic() - last_commit >= COMMIT_INTERVAL:
                await consumer.commit(pending)
                pending = {}
                last_commit = time.monotonic()
        if pending:
            await consumer.commit(pending)
        committed = time.perf_counter()
    finally:
        await consumer.stop()
    return Result(
        "raw aiokafka",
        expected,
        counter.first - started,
        counter.last - counter.first,
        committed - counter.first,
        group,
    )


async def run_taskflow(
    bootstrap: str,
    topic: str,
    ends: dict[int, int],
    observe: contextlib.AbstractContextManager[Any] | None = None,
) -> Result:
    """`observe` (a profiler) is entered just before the app starts and left once it stopped."""
    expected = sum(ends.values())
    counter = Counter(expected)
    app = App(
        "bench",
        broker=f"kafka://{bootstrap}",
        broker_options={**CONSUMER_SETTINGS, "enable_idempotence": False},
        commit_interval=COMMIT_INTERVAL,
    )

    async def handler(msg: Message) -> None:
        counter.hit()

    group = f"tf-{uuid.uuid4().hex[:8]}"
    app.add_consumer(handler, topic, group=group)
    targets = {(topic, p): end for p, end in ends.items()}

    with observe or contextlib.nullcontext():
        started = time.perf_counter()
        result, report = await _run_app(app, counter, targets, started, group)
    if not report.clean:
        raise RuntimeError(f"taskflow did not stop cleanly: {report}")
    return result


async def _run_app(
    app: App, counter: Counter, targets: dict[tuple[str, int], int], started: float, group: str
) -> tuple[Result, Any]:
    async with running(app) as runtime:
        run = asyncio.create_task(runtime.manager.run())
        worker = runtime.worker("handler")
        try:
            async with asyncio.timeout(120):
                await counter.done.wait()
                while True:  # the commit loop commits at most once per commit_interval
                    committed = worker.facts().committed  # type: ignore[attr-defined]
                    if all(committed.get(tp) == end for tp, end in targets.items()):
                        break
                    await asyncio.sleep(0.002)
            final_commit = time.perf_counter()
        finally:
            runtime.manager.request_stop("benchmark done")
            report = await run
    result = Result(
        "taskflow",
        counter.expected,
        counter.first - started,
        counter.last - counter.first,
        final_commit - counter.first,
        group,
    )
    return result, report


CONTENDERS = {"raw": run_raw, "taskflow": run_taskflow}


async def one_round(
    bootstrap: str, name: str, number: int, values: list[bytes], label: str = "", **kwargs: Any
) -> Result:
    topic = f"bench-{name}-{number}-{uuid.uuid4().hex[:6]}"
    await create_topic(bootstrap, topic, PARTITIONS)
    t0 = time.perf_counter()
    ends = await produce(bootstrap, topic, values)
    produced = time.perf_counter() - t0
    if sum(ends.values()) != len(values):
        raise RuntimeError(f"produced {sum(ends.values())} records, wanted {len(values)}")
    t1 = time.perf_counter()
    result = await CONTENDERS[name](bootstrap, topic, ends, **kwargs)
    consumed = time.perf_counter() - t1
    # what the group committed must be the partitions' ends
    committed = await committed_offsets(bootstrap, result.group, topic, PARTITIONS)
    if committed != {p: ends.get(p) for p in range(PARTITIONS)}:
        raise RuntimeError(f"{name} committed {committed}, the ends are {ends}")
    await drop_topic(bootstrap, topic)
    title = label or f"round {number}"
    print(
        f"  {title} {result.contender:<13} {result.rate:>9,.0f} msg/s handled, "
        f"{result.rate_committed:>9,.0f} msg/s to final commit, first record after "
        f"{result.startup:.2f}s (produce {produced:.1f}s, consume {consumed:.1f}s)",
        flush=True,
    )
    return result


# -- reporting ---------------------------------------------------------------------------------


def versions() -> str:
    try:
        tansu = subprocess.run(
            [resolve_tansu_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception as exc:  # informational only
        tansu = f"unknown ({exc})"
    try:
        tf_version = importlib.metadata.version("taskflow")
    except importlib.metadata.PackageNotFoundError:
        tf_version = getattr(taskflow, "__version__", "?")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"python {platform.python_version()} ({platform.python_implementation()}), "
        f"aiokafka {aiokafka.__version__}, taskflow {tf_version} "
        f"({Path(taskflow.__file__).parent}), {tansu}, nproc {cpus}, {platform.machine()}"
    )


def load() -> str:
    one, five, _ = os.getloadavg()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    warning = " (busy machine: expect noisy numbers)" if one > 0.5 * cpus else ""
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {cpus} CPUs{warning}"


def table(results: dict[str, list[Result]]) -> str:
    raw = results["raw"]
    lines = [
        f"{'contender':<14}{'median msg/s':>14}{'min-max msg/s':>22}{'to commit msg/s':>17}"
        f"{'ratio to raw':>14}{'ratio min-max':>15}{'first record':>14}",
    ]
    for rounds in results.values():
        rates = [r.rate for r in rounds]
        ratios = [r.rate / b.rate for r, b in zip(rounds, raw, strict=False)]
        lines.append(
            f"{rounds[0].contender:<14}{statistics.median(rates):>14,.0f}"
            f"{f'{min(rates):,.0f}-{max(rates):,.0f}':>22}"
            f"{statistics.median(r.rate_committed for r in rounds):>17,.0f}"
            f"{f'{statistics.median(ratios):.2f}x':>14}"
            f"{f'{min(ratios):.2f}-{max(ratios):.2f}':>15}"
            f"{f'{statistics.median(r.startup for r in rounds):.2f}s':>14}"
        )
    return "\n".join(lines)


# -- profiling ---------------------------------------------------------------------------------

PYSPY_RATE = 1000  # samples per second


class CProfiled(contextlib.AbstractContextManager["CProfiled"]):
    """cProfile over everything the event loop runs (the app's tasks included)."""

    def __init__(self) -> None:
        self.profiler = cProfile.Profile()

    def __enter__(self) -> CProfiled:
        self.profiler.enable()
        return self

    def __exit__(self, *exc: object) -> None:
        self.profiler.disable()


def pyspy_binary() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


class PySpied(contextlib.AbstractContextManager["PySpied"]):
    """py-spy sampling this very process (on-CPU samples only) while the context is open."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.output = Path(tempfile.mkdtemp(prefix="taskflow-pyspy-")) / "samples.txt"
        self.proc: subprocess.Popen[bytes] | None = None
        self.error = ""

    def __enter__(self) -> PySpied:
        cmd = [self.binary, "record", "--pid", str(os.getpid()), "--rate", str(PYSPY_RATE)]
        cmd += ["--format", "raw", "--output", str(self.output), "--nonblocking"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)  # let it attach (the group join that follows takes a second anyway)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            _, stderr = self.proc.communicate(timeout=30)
            self.error = stderr.decode(errors="replace").strip()
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def stacks(self) -> list[tuple[list[str], int]]:
        if not self.output.exists():
            return []
        out = []
        for line in self.output.read_text(encoding="utf-8", errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                out.append((stack.split(";"), int(count)))
        shutil.rmtree(self.output.parent, ignore_errors=True)
        return out


# Stages of the consume path; a sample counts for the first stage found walking from the leaf up.
OWN_STAGES = [
    "Message construction (kafka.py getmany → Message)",
    "ConsumerWorker._fetch_loop + backpressure",
    "PartitionRunner dispatch (feed, _dispatch, lane start)",
    "PartitionRunner._run_lane loop",
    "OffsetTracker (dispatched/finished)",
    "Processor.process/_call",
    "Context creation",
    "handler adapter + decode (handler.py, codec.py)",
    "on_progress (ConsumerWorker._progress, Event.set)",
    "commit (commit loop, KafkaConsumer.commit)",
    "other taskflow code",
]
OTHER_STAGES = [
    "the no-op handler itself (bench code)",
    "aiokafka: getmany, record decoding",
    "aiokafka: network, heartbeat, other",
    "asyncio event loop, other",
]


def _stage(frames: list[str]) -> str:
    """The stage a sample belongs to (see OWN_STAGES, OTHER_STAGES)."""
    below_aiokafka = False
    for frame in reversed(frames):
        name, _, where = frame.partition(" (")
        if "kafka_throughput.py" in where and ("handler" in name or name.startswith("Counter.")):
            return OTHER_STAGES[0]
        if "<string>" in where:
            continue  # a generated dataclass __init__: it belongs to its caller
        if "taskflow/message.py" in where:
            return OWN_STAGES[0]
        if "aiokafka/" in where:
            below_aiokafka = True
            continue
        if "taskflow/" not in where:
            continue
        if "brokers/kafka.py" in where:
            if name.startswith(("KafkaConsumer.getmany.<locals>", "_message", "_headers")):
                return OWN_STAGES[0]
            if name == "KafkaConsumer.getmany":
                return OTHER_STAGES[1] if below_aiokafka else OWN_STAGES[0]
            if "commit" in name:
                return OWN_STAGES[9]
            return OWN_STAGES[10]
        if "workers/consumer.py" in where:
            if "_progress" in name:
                return OWN_STAGES[8]
            if "commit" in name:
                return OWN_STAGES[9]
            if "_fetch_loop" in name or "_apply_backpressure" in name:
                return OWN_STAGES[1]
            return OWN_STAGES[10]
        if "workers/partition.py" in where:
            return OWN_STAGES[3] if "_run_lane" in name else OWN_STAGES[2]
        if "workers/offsets.py" in where:
            return OWN_STAGES[4]
        if "workers/processing.py" in where:
            return OWN_STAGES[5]
        if "taskflow/context.py" in where:
            return OWN_STAGES[6]
        if "taskflow/handler.py" in where or "taskflow/codec.py" in where:
            return OWN_STAGES[7]
        return OWN_STAGES[10]
    return OTHER_STAGES[2] if below_aiokafka else OTHER_STAGES[3]


def stage_table(stacks: list[tuple[list[str], int]], messages: int) -> tuple[str, str]:
    counts: dict[str, int] = dict.fromkeys(OWN_STAGES + OTHER_STAGES, 0)
    unsorted: dict[str, int] = {}  # what "other taskflow code" is made of
    for frames, count in stacks:
        stage = _stage(frames)
        counts[stage] += count
        if stage == OWN_STAGES[-1]:
            frame = next(f for f in reversed(frames) if "taskflow/" in f)
            unsorted[frame] = unsorted.get(frame, 0) + count
    total = sum(counts.values()) or 1
    per_msg = {stage: n / PYSPY_RATE / messages * 1e6 for stage, n in counts.items()}
    lines = [f"  {'stage':<56}{'µs/msg':>8}{'share':>8}"]
    for group, stages in (("taskflow's own code", OWN_STAGES), ("the rest", OTHER_STAGES)):
        subtotal = sum(counts[s] for s in stages)
        lines.append(
            f"  {group + ':':<56}{subtotal / PYSPY_RATE / messages * 1e6:>8.2f}"
            f"{100 * subtotal / total:>7.1f}%"
        )
        for stage in sorted(stages, key=counts.__getitem__, reverse=True):
            lines.append(
                f"    {stage:<54}{per_msg[stage]:>8.2f}{100 * counts[stage] / total:>7.1f}%"
            )
            if stage == OWN_STAGES[-1]:
                for frame, n in sorted(unsorted.items(), key=lambda item: -item[1])[:3]:
                    lines.append(f"      {n / PYSPY_RATE / messages * 1e6:.2f} in {frame}")
    own = sorted(OWN_STAGES, key=counts.__getitem__, reverse=True)[:3]
    own_total = sum(per_msg[s] for s in OWN_STAGES)
    verdict = (
        f"taskflow's own code costs {own_total:.2f} µs/msg on the CPU here "
        f"({100 * sum(counts[s] for s in OWN_STAGES) / total:.0f}% of the round's on-CPU samples); "
        "most of it: " + "; ".join(f"{s} {per_msg[s]:.2f}" for s in own) + "."
    )
    return "\n".join(lines), verdict


# (label, file fragment, function name) of the per-message path, for the cProfile table
HOT_PATH = [
    ("KafkaConsumer.getmany (Message construction)", "brokers/kafka.py", "getmany"),
    ("  <listcomp>/<dictcomp> in getmany", "brokers/kafka.py", "<listcomp>"),
    ("  kafka.py _message (per record)", "brokers/kafka.py", "_message"),
    ("  kafka.py _headers", "brokers/kafka.py", "_headers"),
    ("  dataclass __init__ called from taskflow (Message)", "<string>", "__init__"),
    ("  make_message", "taskflow/message.py", "make_message"),
    ("ConsumerWorker._fetch_loop", "workers/consumer.py", "_fetch_loop"),
    ("PartitionRunner.feed", "workers/partition.py", "feed"),
    ("PartitionRunner._dispatch", "workers/partition.py", "_dispatch"),
    ("PartitionRunner._run_lane", "workers/partition.py", "_run_lane"),
    ("OffsetTracker.dispatched", "workers/offsets.py", "dispatched"),
    ("OffsetTracker.finished", "workers/offsets.py", "finished"),
    ("ConsumerWorker._progress (on_progress)", "workers/consumer.py", "_progress"),
    ("Processor.process", "workers/processing.py", "process"),
    ("Processor._call", "workers/processing.py", "_call"),
    ("Context.__init__", "taskflow/context.py", "__init__"),
    ("handler adapter call_payload", "taskflow/handler.py", "call_payload"),
    ("codec _identity (decode)", "taskflow/codec.py", "_identity"),
    ("the no-op handler (bench code)", "kafka_throughput.py", "handler"),
    ("ConsumerWorker.commit", "workers/consumer.py", "commit"),
    ("aiokafka AIOKafkaConsumer.getmany", "aiokafka/consumer/consumer.py", "getmany"),
]


def _find(stats: pstats.Stats, fragment: str, func: str) -> tuple[int, float, float] | None:
    calls, tot, cum, found = 0, 0.0, 0.0, False
    for (filename, _line, name), (_cc, nc, tt, ct, callers) in stats.stats.items():  # type: ignore[attr-defined]
        if name != func or fragment not in filename:
            continue
        if filename == "<string>":  # generated dataclass code: count only taskflow's calls
            for (caller_file, _l, _n), (_c, c_nc, c_tt, c_ct) in callers.items():
                if "taskflow/" in caller_file:
                    found, calls, tot, cum = True, calls + c_nc, tot + c_tt, cum + c_ct
            continue
        found = True
        calls += nc
        tot += tt
        cum = max(cum, ct)
    return (calls, tot, cum) if found else None


def cprofile_section(profiler: cProfile.Profile, messages: int) -> str:
    stats = pstats.Stats(profiler)
    out = io.StringIO()
    out.write(
        "cProfile, per function (profiled µs per message; cProfile inflates call-heavy code, so\n"
        "compare the rows with each other, not with the unprofiled rates):\n"
    )
    out.write(f"  {'function':<50}{'calls':>10}{'own µs':>9}{'incl µs':>9}\n")
    for label, fragment, func in HOT_PATH:
        found = _find(stats, fragment, func)
        if found is not None:
            calls, tot, cum = found
            own, incl = tot / messages * 1e6, cum / messages * 1e6
            out.write(f"  {label:<50}{calls:>10,}{own:>9.3f}{incl:>9.3f}\n")
    relevant = r"taskflow/|aiokafka/|kafka_throughput|asyncio/|<string>|\{"
    for sort in ("cumulative", "tottime"):
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats(sort).print_stats(relevant, 25)
        text = buffer.getvalue()
        start = text.find("   ncalls")
        out.write(f"\n== cProfile: top 25 by {sort} (taskflow, aiokafka, asyncio, builtins) ==\n")
        out.write(text[start:].rstrip() + "\n" if start >= 0 else text)
    return out.getvalue()


async def profile(bootstrap: str, values: list[bytes], plain: dict[str, float]) -> str:
    head = io.StringIO()
    head.write("taskflow consume hot path: where the time per message goes\n")
    head.write(f"{versions()}\n{load()}\n")
    head.write(
        f"{len(values):,} records, {PARTITIONS} partitions, partition ordering, no-op "
        "`async def handler(msg: Message)`, kafka:// on a local Tansu.\n"
        f"Unprofiled medians of this run: raw aiokafka {plain['raw']:,.0f} msg/s "
        f"({1e6 / plain['raw']:.2f} µs/msg), taskflow {plain['taskflow']:,.0f} msg/s "
        f"({1e6 / plain['taskflow']:.2f} µs/msg): taskflow adds "
        f"{1e6 / plain['taskflow'] - 1e6 / plain['raw']:+.2f} µs/msg, part CPU, part waiting.\n\n"
    )
    binary = pyspy_binary()
    if binary is not None:
        spied = PySpied(binary)
        result = await one_round(bootstrap, "taskflow", 0, values, observe=spied, label="py-spy")
        stacks = spied.stacks()
        if stacks:
            table_text, verdict = stage_table(stacks, result.messages)
            head.write(
                f"Sampled with py-spy ({PYSPY_RATE}/s, on-CPU samples only, over the whole "
                f"taskflow round; {result.rate:,.0f} msg/s under sampling):\n{verdict}\n\n"
                f"{table_text}\n\n"
            )
        else:
            head.write(f"py-spy produced no samples ({spied.error or 'no output'}).\n\n")
    else:
        head.write(
            "py-spy is not installed (.venv/bin/pip install py-spy for a sampled breakdown).\n\n"
        )
    profiled = CProfiled()
    result = await one_round(bootstrap, "taskflow", 0, values, observe=profiled, label="cProfile")
    head.write(f"Under cProfile: {result.rate:,.0f} msg/s.\n")
    stats = pstats.Stats(profiled.profiler)
    pauses = _find(stats, "brokers/kafka.py", "pause")
    fetches = _find(stats, "brokers/kafka.py", "getmany")
    head.write(
        f"Backpressure: {pauses[0] if pauses else 0} pause() calls for "
        f"{fetches[0] if fetches else 0} getmany() calls in that round (aiokafka drops a "
        "paused partition's prefetched records; they are fetched again after resume()).\n"
    )
    head.write(cprofile_section(profiled.profiler, result.messages))
    return head.getvalue()


# -- main --------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> None:
    print(versions(), flush=True)
    print(load(), flush=True)
    print(
        f"{args.messages:,} records per round (~{len(make_values(1)[0])} B values, {KEYS} keys, "
        f"{PARTITIONS} partitions), {args.rounds} interleaved rounds per contender, "
        f"max_records {MAX_RECORDS}, commit interval {COMMIT_INTERVAL:g}s, {CONSUMER_SETTINGS}",
        flush=True,
    )
    values = make_values(args.messages)
    began = time.perf_counter()
    with TansuBroker() as broker:
        results: dict[str, list[Result]] = {"raw": [], "taskflow": []}
        for number in range(1, args.rounds + 1):
            for name in ("raw", "taskflow"):
                results[name].append(await one_round(broker.bootstrap, name, number, values))
        print()
        print(table(results))
        ratio = statistics.median(
            t.rate / r.rate for t, r in zip(results["taskflow"], results["raw"], strict=True)
        )
        verdict = "met" if ratio >= 0.9 else "NOT met"
        took = time.perf_counter() - began
        print(f"taskflow / raw = {ratio:.2f}x (target ≥ 0.90x): {verdict}; rounds took {took:.0f}s")
        if args.profile:
            print("\nprofiling taskflow (a round under py-spy if installed, one under cProfile)")
            plain = {name: statistics.median(r.rate for r in rs) for name, rs in results.items()}
            PROFILE_PATH.write_text(
                await profile(broker.bootstrap, values, plain), encoding="utf-8"
            )
            print(f"profile written to {PROFILE_PATH}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-profile", dest="profile", action="store_false")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
