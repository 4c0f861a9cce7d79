"""Kafka throughput: taskflow beside raw aiokafka loops doing the same work, on one local Tansu.

Every contender here runs in this one process (``suite.py`` runs each in a process of its own,
beside FastStream and Faust): use this script to profile. The run starts a Tansu broker and a
private redis-server, both on free ports, and produces N records (~200-byte JSON, keys spread over
1,000 keys) once into a 4-partition topic. Then, in interleaved rounds (raw, raw-asyncfor,
raw-claim, …, taskflow-all, raw, …), each contender reads that topic from the start in a fresh
group; Redis is flushed before each contender that uses it. See `kafka_contenders` for what each
contender does.

Per round: msg/s from the first record handed to a handler to the last one handled, and to the
final commit; time from starting the contender to its first record. After each round the group's
committed offsets must be the partition ends (at least what it handled, for a contender that
reads only part of the topic). The table gives each contender's median and range,
and the medians of its per-round ratios to its raw counterpart and to the plain raw loop. Then
the contenders named by ``--profile`` run once under py-spy and once under cProfile; see
`kafka_profile`.

    .venv/bin/python bench/kafka_throughput.py [--messages 100000] [--rounds 5]
        [--contenders raw,taskflow,...] [--profile taskflow-idem] [--no-profile]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # for tests._tansu; appended, so PYTHONPATH can pick the taskflow

import aiokafka  # noqa: E402
import opentelemetry.sdk.version  # noqa: E402
import redis  # noqa: E402
import redis.utils  # noqa: E402
from aiokafka import AIOKafkaProducer  # noqa: E402
from aiokafka.admin import AIOKafkaAdminClient  # noqa: E402
from kafka_contenders import (  # noqa: E402
    COMMIT_INTERVAL,
    CONSUMER_SETTINGS,
    CONTENDERS,
    MAX_RECORDS,
    PARTITIONS,
    TARGETS,
    Result,
    Setup,
)
from kafka_profile import profile_report  # noqa: E402
from otel_setup import TRACING  # noqa: E402
from raw_instrumented import redis_client  # noqa: E402

import taskflow  # noqa: E402
from tests._redis_server import RedisServer  # noqa: E402
from tests._tansu import (  # noqa: E402
    TansuBroker,
    committed_offsets,
    create_topic,
    resolve_tansu_binary,
)

KEYS = 1000
BENCH = Path(__file__).resolve().parent


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
    """Free the broker's memory; best effort."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    with contextlib.suppress(Exception):
        async with asyncio.timeout(10):
            await admin.start()
            await admin.delete_topics([topic])
    with contextlib.suppress(Exception):
        await admin.close()


# -- one round ---------------------------------------------------------------------------------


async def flush_redis(url: str) -> None:
    client = redis_client(url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


async def one_round(setup: Setup, name: str, title: str, **kwargs: Any) -> Result:
    """Run contender `name` once over the whole topic and check what its group committed."""
    contender = CONTENDERS[name]
    if contender.uses_redis:
        await flush_redis(setup.redis_url)
    group = f"{name}-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    result = await contender.load()(setup, group, **kwargs)
    consumed = time.perf_counter() - t0
    committed = await committed_offsets(setup.bootstrap, group, setup.topic, PARTITIONS)
    if setup.whole and committed != {p: setup.ends.get(p) for p in range(PARTITIONS)}:
        raise RuntimeError(f"{name} committed {committed}, the ends are {setup.ends}")
    if sum(offset or 0 for offset in committed.values()) < setup.expected:
        raise RuntimeError(f"{name} committed {committed}, less than it handled")
    print(
        f"  {title} {name:<17}{result.rate:>9,.0f} msg/s handled, "
        f"{result.rate_committed:>9,.0f} to final commit, first record after "
        f"{result.startup:.2f}s (consume {consumed:.1f}s)",
        flush=True,
    )
    return result


# -- reporting ---------------------------------------------------------------------------------


def redis_py() -> str:
    """redis-py's version and the reply parser it uses: hiredis's, when it is installed."""
    if redis.utils.HIREDIS_AVAILABLE:
        parser = f"hiredis {importlib.metadata.version('hiredis')} parser"
    else:
        parser = "pure-Python parser"
    return f"redis-py {redis.__version__} ({parser})"


def versions() -> str:
    try:
        tansu = subprocess.run(
            [resolve_tansu_binary(), "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except Exception as exc:  # informational only
        tansu = f"unknown ({exc})"
    try:
        redis_server = subprocess.run(
            ["redis-server", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.split()[2]
    except Exception as exc:  # informational only
        redis_server = f"unknown ({exc})"
    try:
        tf_version = importlib.metadata.version("taskflow")
    except importlib.metadata.PackageNotFoundError:
        tf_version = getattr(taskflow, "__version__", "?")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"python {platform.python_version()} ({platform.python_implementation()}), "
        f"aiokafka {aiokafka.__version__}, {redis_py()}, "
        f"redis-server {redis_server}, opentelemetry-sdk {opentelemetry.sdk.version.__version__}, "
        f"taskflow {tf_version} ({Path(taskflow.__file__).parent}), {tansu}, nproc {cpus}, "
        f"{platform.machine()}"
    )


def load() -> str:
    one, five, _ = os.getloadavg()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    warning = " (busy machine: expect noisy numbers)" if one > 0.5 * cpus else ""
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {cpus} CPUs{warning}"


def _ratios(rounds: list[Result], base: list[Result]) -> list[float]:
    return [r.rate / b.rate for r, b in zip(rounds, base, strict=True)]


def _ratio_cells(ratios: list[float]) -> str:
    cell = f"{statistics.median(ratios):.2f}x"
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
    return f"{cell:>8} {spread:<10}"


def table(results: dict[str, list[Result]]) -> str:
    """One line per contender: median, range, ratios (medians of per-round ratios)."""
    lines = [
        f"{'contender':<18}{'median msg/s':>13}{'min-max msg/s':>20}  "
        f"{'vs counterpart':<30}{'vs raw':<19}{'to commit':>10}{'1st record':>11}"
    ]
    for name, rounds in results.items():
        rates = [r.rate for r in rounds]
        counterpart = CONTENDERS[name].counterpart
        if counterpart in results and counterpart != name:
            versus = f"{_ratio_cells(_ratios(rounds, results[counterpart]))} {counterpart:<11}"
        else:
            versus = ""
        plain = _ratio_cells(_ratios(rounds, results["raw"])) if "raw" in results else ""
        lines.append(
            f"{name:<18}{statistics.median(rates):>13,.0f}"
            f"{f'{min(rates):,.0f}-{max(rates):,.0f}':>20}  {versus:<30}{plain:<19}"
            f"{statistics.median(r.rate_committed for r in rounds):>10,.0f}"
            f"{f'{statistics.median(r.startup for r in rounds):.2f}s':>11}"
        )
    return "\n".join(lines)


def verdicts(results: dict[str, list[Result]]) -> list[str]:
    out = []
    for name, base, target in TARGETS:
        if name not in results or base not in results:
            continue
        ratio = statistics.median(_ratios(results[name], results[base]))
        verdict = "met" if ratio >= target else "NOT met"
        out.append(f"{name} / {base} = {ratio:.3f}x (target ≥ {target:.2f}x): {verdict}")
    return out


# -- profiling ---------------------------------------------------------------------------------


async def profile(setup: Setup, name: str, medians: dict[str, float]) -> Path:
    counterpart = CONTENDERS[name].counterpart
    path = BENCH / CONTENDERS[name].profile_file
    rates = {n: medians[n] for n in (name, counterpart) if n in medians}
    compared = ""
    if len(rates) == 2:
        added = 1e6 / rates[name] - 1e6 / rates[counterpart]
        compared = (
            f"Unprofiled medians of this run: {counterpart} {rates[counterpart]:,.0f} msg/s "
            f"({1e6 / rates[counterpart]:.2f} µs/msg), {name} {rates[name]:,.0f} msg/s "
            f"({1e6 / rates[name]:.2f} µs/msg): {name} adds {added:+.2f} µs/msg, part CPU, "
            "part waiting.\n"
        )
    extra = {
        "taskflow-idem": "idempotent=True on a private redis-server (loopback), ",
        "taskflow-idem-key": "idempotent=True, idempotency_key= the JSON's id, on a private "
        "redis-server (loopback), ",
        "taskflow-tracing": f"tracer_provider: {TRACING}, ",
        "taskflow-key16": "ordering='key', concurrency=16, ",
        "taskflow-all": "idempotency, traces, metrics, a rate limit and a timeout, ",
    }.get(name, "")
    header = (
        f"{name}: where the time per message goes\n{versions()}\n{load()}\n"
        f"{setup.expected:,} records, {PARTITIONS} partitions, {extra}a no-op "
        "`async def handler(order: dict)` (JSON decoded by taskflow), kafka:// on a local "
        f"Tansu.\n{compared}\n"
    )

    async def run_round(observer: contextlib.AbstractContextManager[Any], label: str) -> Result:
        return await one_round(setup, name, f"{label:<8}", observe=observer)

    path.write_text(await profile_report(header, run_round), encoding="utf-8")
    return path


# -- main --------------------------------------------------------------------------------------


async def main_async(args: argparse.Namespace) -> None:
    print(versions(), flush=True)
    print(load(), flush=True)
    print(
        f"{args.messages:,} records (~{len(make_values(1)[0])} B values, {KEYS} keys, "
        f"{PARTITIONS} partitions) produced once; {args.rounds} interleaved rounds per "
        f"contender, each in a fresh group; max_records {MAX_RECORDS}, commit interval "
        f"{COMMIT_INTERVAL:g}s, {CONSUMER_SETTINGS}",
        flush=True,
    )
    if {"raw-tracing", "taskflow-tracing"} & set(args.contenders):
        print(f"tracing: {TRACING}", flush=True)
    began = time.perf_counter()
    with TansuBroker() as broker, RedisServer() as redis_server:
        topic = f"bench-{uuid.uuid4().hex[:6]}"
        await create_topic(broker.bootstrap, topic, PARTITIONS)
        t0 = time.perf_counter()
        ends = await produce(broker.bootstrap, topic, make_values(args.messages))
        if sum(ends.values()) != args.messages:
            raise RuntimeError(f"produced {sum(ends.values())} records, wanted {args.messages}")
        print(f"produced in {time.perf_counter() - t0:.1f}s; redis at {redis_server.url}")
        setup = Setup(broker.bootstrap, topic, ends, redis_server.url)
        results: dict[str, list[Result]] = {name: [] for name in args.contenders}
        for number in range(1, args.rounds + 1):
            for name in args.contenders:
                results[name].append(await one_round(setup, name, f"round {number}"))
        took = time.perf_counter() - began
        print()
        print(table(results))
        for line in verdicts(results):
            print(line)
        print(f"{load()}; rounds took {took:.0f}s")
        medians = {name: statistics.median(r.rate for r in rs) for name, rs in results.items()}
        for name in args.profile:
            print(f"\nprofiling {name} (a round under py-spy if installed, one under cProfile)")
            path = await profile(setup, name, medians)
            print(f"profile written to {path}")
        await drop_topic(broker.bootstrap, topic)


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CONTENDERS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown contender(s) {', '.join(unknown)}; pick from {', '.join(CONTENDERS)}"
        )
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000, help="records in the topic")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per contender")
    default = [name for name, contender in CONTENDERS.items() if not contender.optional]
    parser.add_argument(
        "--contenders",
        type=_names,
        default=default,
        help=f"comma-separated, run in this order each round (default: {','.join(default)}; "
        "also: raw-redis-lua)",
    )
    parser.add_argument(
        "--profile",
        type=_names,
        default=["taskflow-idem"],
        help="comma-separated taskflow contenders to profile after the rounds "
        "(default: taskflow-idem)",
    )
    parser.add_argument("--no-profile", dest="profile", action="store_const", const=[])
    args = parser.parse_args()
    if [name for name in args.profile if not CONTENDERS[name].profile_file]:
        parser.error("--profile takes taskflow contenders only")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
