"""Where a taskflow contender's time per message goes: one round under py-spy, one under cProfile.

py-spy (when installed beside the interpreter or on PATH) samples this very process and each
on-CPU sample is put in one stage of the consume path (`STAGES`); cProfile gives the per-function
rows of `HOT_PATH` and the top 25 functions by cumulative and by own time.
"""

from __future__ import annotations

import contextlib
import cProfile
import io
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import taskflow

__all__ = ["CProfiled", "PySpied", "cprofile_section", "pyspy_binary", "stage_table"]

PYSPY_RATE = 1000  # samples per second
BENCH_CODE = ("taskflow_contenders.py", "_child.py")  # where the handler and its Counter live
TASKFLOW = f"{Path(taskflow.__file__).parent}/"  # the taskflow that runs, maybe from PYTHONPATH


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
        cmd += ["--format", "raw", "--full-filenames", "--output", str(self.output)]
        cmd += ["--nonblocking"]
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


# -- py-spy stages -----------------------------------------------------------------------------

MESSAGE = "Message construction (kafka.py getmany → Message)"
FETCH = "ConsumerWorker._fetch_loop + backpressure"
DISPATCH = "PartitionRunner dispatch (feed, _dispatch, lane start)"
LANE = "PartitionRunner lane loop (_run_lane, _run_worker)"
OFFSETS = "OffsetTracker (dispatched/finished)"
PROCESSOR = "Processor.process/_call"
CONTEXT = "Context creation"
ADAPTER = "handler adapter + decode, without the JSON parse"
PROGRESS = "on_progress (ConsumerWorker._progress, Event.set)"
COMMIT = "commit (commit loop, KafkaConsumer.commit)"
IDEMPOTENCY = "idempotency middleware + store (own code, tasks)"
TELEMETRY = "telemetry middleware (own code)"
OTHER_OWN = "other taskflow code"
OWN_STAGES = [
    MESSAGE, FETCH, DISPATCH, LANE, OFFSETS, PROCESSOR, CONTEXT, ADAPTER, PROGRESS, COMMIT,
    IDEMPOTENCY, TELEMETRY, OTHER_OWN,
]  # fmt: skip

HANDLER = "the no-op handler itself (bench code)"
JSON = "the JSON parse (json's decoder: raw's work too)"
REDIS = "redis-py, called by taskflow (pack, send, parse)"
REDIS_OTHER = "redis-py, other"
OTEL = "OpenTelemetry API/SDK, called by taskflow"
OTEL_OTHER = "OpenTelemetry SDK, other (the BatchSpanProcessor thread)"
AIOKAFKA_FETCH = "aiokafka: getmany, record decoding"
AIOKAFKA_OTHER = "aiokafka: network, heartbeat, other"
LOOP = "asyncio event loop, other"
OTHER_STAGES = [
    HANDLER, JSON, REDIS, REDIS_OTHER, OTEL, OTEL_OTHER, AIOKAFKA_FETCH, AIOKAFKA_OTHER, LOOP,
]  # fmt: skip
# broken down by the taskflow function above them (the outermost library function, for the others)
DETAILED = (IDEMPOTENCY, REDIS, REDIS_OTHER, TELEMETRY, OTEL, OTEL_OTHER, OTHER_OWN)


def _own_stage(name: str, path: str, below_aiokafka: bool) -> str:
    """The stage of a sample whose innermost taskflow frame is `name` in `path` (in taskflow/)."""
    if path == "message.py":
        return MESSAGE
    if path == "middleware/idempotency.py" or path.startswith("stores/"):
        return IDEMPOTENCY
    if path == "telemetry/middleware.py":
        return TELEMETRY
    if path == "brokers/kafka.py":
        if name.startswith(("KafkaConsumer.getmany.<locals>", "_message", "_headers")):
            return MESSAGE
        if name == "KafkaConsumer.getmany":
            return AIOKAFKA_FETCH if below_aiokafka else MESSAGE
        return COMMIT if "commit" in name else OTHER_OWN
    if path == "workers/consumer.py":
        if "_progress" in name:
            return PROGRESS
        if "commit" in name:
            return COMMIT
        if "_fetch_loop" in name or "_apply_backpressure" in name:
            return FETCH
        return OTHER_OWN
    if path == "workers/partition.py":
        return LANE if name.endswith(("_run_lane", "_run_worker", "_drain_lane")) else DISPATCH
    return {
        "workers/offsets.py": OFFSETS,
        "workers/processing.py": PROCESSOR,
        "context.py": CONTEXT,
        "handler.py": ADAPTER,
        "codec.py": ADAPTER,
    }.get(path, OTHER_OWN)


def _stage(frames: list[str]) -> tuple[str, str]:
    """The stage of a sample (py-spy's full file names), and where in it: the taskflow function
    it is under (and the library function that one called), or the outermost library function."""
    below_aiokafka = below_redis = below_otel = below_json = False
    outermost = ""  # of the library frames, for a sample that no taskflow frame is above
    for frame in reversed(frames):
        name, _, where = frame.partition(" (")
        bench_code = any(f"/{code}:" in where for code in BENCH_CODE)
        if bench_code and name.rpartition(".")[2] in ("handler", "hit"):
            return HANDLER, ""
        if "<string>" in where:
            continue  # a generated dataclass __init__: it belongs to its caller
        if "/aiokafka/" in where:
            below_aiokafka = True
        elif "/redis/" in where:
            below_redis = True
        elif "/opentelemetry/" in where:
            below_otel = True
        elif "/json/" in where:
            below_json = True
        if "/site-packages/" in where:
            outermost = frame  # at the taskflow frame: the library function that it called
        if not where.startswith(TASKFLOW):
            continue
        if below_redis:
            return REDIS, f"{_short(frame)} → {_short(outermost)}"
        if below_otel:
            return OTEL, f"{_short(frame)} → {_short(outermost)}"
        path = where[len(TASKFLOW) :].rsplit(":", 1)[0]
        if below_json and path == "codec.py":
            return JSON, ""
        return _own_stage(name, path, below_aiokafka), _short(frame)
    if below_redis:
        return REDIS_OTHER, _short(outermost)
    if below_otel:
        return OTEL_OTHER, _short(outermost)
    return (AIOKAFKA_OTHER if below_aiokafka else LOOP), ""


def stage_table(stacks: list[tuple[list[str], int]], messages: int) -> tuple[str, str]:
    """A per-stage table in µs per message, and a one-paragraph verdict."""
    counts: dict[str, int] = dict.fromkeys(OWN_STAGES + OTHER_STAGES, 0)
    details: dict[str, dict[str, int]] = {stage: {} for stage in DETAILED}
    for frames, count in stacks:
        stage, frame = _stage(frames)
        counts[stage] += count
        if stage in details and frame:
            details[stage][frame] = details[stage].get(frame, 0) + count
    total = sum(counts.values()) or 1

    def us(n: float) -> float:
        return n / PYSPY_RATE / messages * 1e6

    lines = [f"  {'stage':<60}{'µs/msg':>8}{'share':>8}"]
    for group, stages in (("taskflow's own code", OWN_STAGES), ("the rest", OTHER_STAGES)):
        subtotal = sum(counts[s] for s in stages)
        lines.append(f"  {group + ':':<60}{us(subtotal):>8.2f}{100 * subtotal / total:>7.1f}%")
        for stage in sorted(stages, key=counts.__getitem__, reverse=True):
            if not counts[stage]:
                continue
            lines.append(
                f"    {stage:<58}{us(counts[stage]):>8.2f}{100 * counts[stage] / total:>7.1f}%"
            )
            for frame, n in sorted(details.get(stage, {}).items(), key=lambda kv: -kv[1])[:4]:
                lines.append(f"      {us(n):.2f} under {frame}")
    own = sorted(OWN_STAGES, key=counts.__getitem__, reverse=True)[:3]
    own_total = sum(us(counts[s]) for s in OWN_STAGES)
    heaviest = sorted(counts, key=counts.__getitem__, reverse=True)[:4]
    verdict = (
        f"on-CPU total {us(total):.2f} µs/msg; taskflow's own code {own_total:.2f} "
        f"({100 * sum(counts[s] for s in OWN_STAGES) / total:.0f}%), most of it: "
        + "; ".join(f"{s} {us(counts[s]):.2f}" for s in own)
        + ". Heaviest stages overall: "
        + "; ".join(f"{s} {us(counts[s]):.2f}" for s in heaviest)
        + "."
    )
    return "\n".join(lines), verdict


def _short(frame: str) -> str:
    """``Class.method (…/taskflow/x/y.py:12)`` → ``Class.method (x/y.py)``; libraries likewise."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({path.removeprefix(TASKFLOW).rpartition('/site-packages/')[2]})"


# -- cProfile ----------------------------------------------------------------------------------

# (label, file fragment, function name) of the per-message path, for the cProfile table
HOT_PATH = [
    ("KafkaConsumer.getmany (Message construction)", "brokers/kafka.py", "getmany"),
    ("  kafka.py _message (per record)", "brokers/kafka.py", "_message"),
    ("  dataclass __init__ called from taskflow (Message)", "<string>", "__init__"),
    ("ConsumerWorker._fetch_loop", "workers/consumer.py", "_fetch_loop"),
    ("PartitionRunner.feed", "workers/partition.py", "feed"),
    ("PartitionRunner._dispatch", "workers/partition.py", "_dispatch"),
    ("PartitionRunner._run_lane", "workers/partition.py", "_run_lane"),
    ("PartitionRunner._run_worker", "workers/partition.py", "_run_worker"),
    ("SequentialTracker.settled", "workers/offsets.py", "settled"),
    ("OffsetTracker.dispatched", "workers/offsets.py", "dispatched"),
    ("OffsetTracker.finished", "workers/offsets.py", "finished"),
    ("ConsumerWorker._progress (on_progress)", "workers/consumer.py", "_progress"),
    ("Processor.process", "workers/processing.py", "process"),
    ("Processor._call", "workers/processing.py", "_call"),
    ("Context.__init__", "taskflow/context.py", "__init__"),
    ("Idempotency.__call__", "middleware/idempotency.py", "__call__"),
    ("  Idempotency._run_claimed", "middleware/idempotency.py", "_run_claimed"),
    ("  Idempotency._complete", "middleware/idempotency.py", "_complete"),
    ("  idempotency _cancel (renewal task)", "middleware/idempotency.py", "_cancel"),
    ("  consumer_key key_for", "middleware/idempotency.py", "key_for"),
    ("  RedisIdempotencyStore.claim", "stores/redis.py", "claim"),
    ("  RedisIdempotencyStore.claim_many", "stores/redis.py", "claim_many"),
    ("  RedisIdempotencyStore.complete", "stores/redis.py", "complete"),
    ("  RedisIdempotencyStore.complete_many", "stores/redis.py", "complete_many"),
    ("  RedisIdempotencyStore._run_many", "stores/redis.py", "_run_many"),
    ("  redis Pipeline.execute", "redis/asyncio/client.py", "execute"),
    ("  redis Pipeline.load_scripts (SCRIPT EXISTS)", "redis/asyncio/client.py", "load_scripts"),
    ("  redis Redis.execute_command (single call)", "redis/asyncio/client.py", "execute_command"),
    ("  redis Connection.pack_commands", "redis/asyncio/connection.py", "pack_commands"),
    ("  redis Connection.read_response", "redis/asyncio/connection.py", "read_response"),
    ("ConsumerTelemetry.__call__", "telemetry/middleware.py", "__call__"),
    ("  ConsumerTelemetry._span_attributes", "telemetry/middleware.py", "_span_attributes"),
    ("  otel propagate.extract", "opentelemetry/propagate/__init__.py", "extract"),
    ("  otel SDK Tracer.start_span", "opentelemetry/sdk/trace/__init__.py", "start_span"),
    ("  otel SDK Span.end", "opentelemetry/sdk/trace/__init__.py", "end"),
    ("  otel context attach", "opentelemetry/context/__init__.py", "attach"),
    ("  otel context detach", "opentelemetry/context/__init__.py", "detach"),
    ("handler adapter call_payload", "taskflow/handler.py", "call_payload"),
    ("handler adapter with the JSON decode (codec.py)", "taskflow/codec.py", "call"),
    ("  JSONDecoder.raw_decode (raw's work too)", "json/decoder.py", "raw_decode"),
    ("the no-op handler (bench code)", "taskflow_contenders.py", "handler"),
    ("Counter.hit (bench code)", "_child.py", "hit"),
    ("ConsumerWorker.commit", "workers/consumer.py", "commit"),
    ("aiokafka AIOKafkaConsumer.getmany", "aiokafka/consumer/consumer.py", "getmany"),
]


def find(stats: pstats.Stats, fragment: str, func: str) -> tuple[int, float, float] | None:
    """(calls, own s, cumulative s) of `func` in files matching `fragment`, or None."""
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
        "compare the rows with each other, not with the unprofiled rates; a coroutine's calls\n"
        "count each resumption after an await, so they overstate how often it was called):\n"
    )
    out.write(f"  {'function':<50}{'calls':>10}{'own µs':>9}{'incl µs':>9}\n")
    for label, fragment, func in HOT_PATH:
        found = find(stats, fragment, func)
        if found is not None:
            calls, tot, cum = found
            own, incl = tot / messages * 1e6, cum / messages * 1e6
            out.write(f"  {label:<50}{calls:>10,}{own:>9.3f}{incl:>9.3f}\n")
    relevant = r"taskflow/|aiokafka/|redis/|opentelemetry/|kafka_contenders|asyncio/|<string>|\{"
    for sort in ("cumulative", "tottime"):
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats(sort).print_stats(relevant, 25)
        text = buffer.getvalue()
        start = text.find("   ncalls")
        out.write(
            f"\n== cProfile: top 25 by {sort} (taskflow, aiokafka, redis, opentelemetry, "
            "asyncio, builtins) ==\n"
        )
        out.write(text[start:].rstrip() + "\n" if start >= 0 else text)
    return out.getvalue()


async def profile_report(
    header: str, run_round: Callable[[contextlib.AbstractContextManager[Any], str], Awaitable[Any]]
) -> str:
    """`header`, then a py-spy stage table and the cProfile tables of one round each.

    `run_round(observer, label)` runs one round of the profiled contender inside `observer` and
    returns its `Result`.
    """
    out = io.StringIO()
    out.write(header)
    binary = pyspy_binary()
    if binary is not None:
        spied = PySpied(binary)
        result = await run_round(spied, "py-spy")
        stacks = spied.stacks()
        if stacks:
            table_text, verdict = stage_table(stacks, result.messages)
            out.write(
                f"Sampled with py-spy ({PYSPY_RATE}/s, on-CPU samples only, all threads, over "
                f"the whole round; {result.rate:,.0f} msg/s under sampling):\n{verdict}\n\n"
                f"{table_text}\n\n"
            )
        else:
            out.write(f"py-spy produced no samples ({spied.error or 'no output'}).\n\n")
    else:
        out.write(
            "py-spy is not installed (.venv/bin/pip install py-spy for a sampled breakdown).\n\n"
        )
    profiled = CProfiled()
    result = await run_round(profiled, "cProfile")
    out.write(f"Under cProfile: {result.rate:,.0f} msg/s.\n")
    stats = pstats.Stats(profiled.profiler)
    pauses = find(stats, "brokers/kafka.py", "pause")
    fetches = find(stats, "brokers/kafka.py", "getmany")
    out.write(
        f"Backpressure: {pauses[0] if pauses else 0} pause() calls for "
        f"{fetches[0] if fetches else 0} getmany() calls in that round (aiokafka drops a "
        "paused partition's prefetched records; they are fetched again after resume()).\n"
    )
    out.write(cprofile_section(profiled.profiler, result.messages))
    return out.getvalue()
