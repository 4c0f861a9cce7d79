"""Shutdown figures: SIGTERM to process exit for `taskflow run`, idle and with 1,000 in flight.

Each measurement starts ``python -m taskflow run`` on an app of ``bench/apps/shutdown_apps.py``,
waits until it is ready (its log says so), sends SIGTERM, and times the exit on a pidfd (a
precise wake-up, not a poll).

- ``idle, memory``: the ``idle`` app (one consumer, one periodic task) on the memory broker.
- ``idle, kafka``: the same app on the Tansu broker: the consumer also commits and leaves its
  group on the way out.
- ``in-flight``: the ``inflight`` app on Tansu, ``ordering="key"``, ``concurrency=250`` on a
  4-partition topic holding 250 records per partition, each with its own key, each handler
  sleeping 1 s. SIGTERM is sent the moment the 1,000th handler starts. Reported: SIGTERM to
  exit; the last handler's end to exit (what the shutdown itself takes once the work is done);
  how many handlers finished; the exit code; and whether the group committed every record.

    .venv/bin/python bench/shutdown.py [--rounds 3]

starts its own Tansu broker; the suite (`suite.py`) calls `measure` with its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import select
import signal
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))

from aiokafka import AIOKafkaProducer  # noqa: E402

from tests._process import AppProcess  # noqa: E402
from tests._tansu import TansuBroker, committed_offsets, create_topic  # noqa: E402

APPS = Path(__file__).resolve().parent / "apps"
PARTITIONS = 4
PER_PARTITION = 250
IN_FLIGHT = PARTITIONS * PER_PARTITION
HANDLER_SLEEP = 1.0
# Tansu refuses idempotent producers; the session settings are those of the throughput contenders.
KAFKA_ENV = {
    "TASKFLOW_KAFKA_ENABLE_IDEMPOTENCE": "false",
    "TASKFLOW_KAFKA_SESSION_TIMEOUT_MS": "2000",
    "TASKFLOW_KAFKA_HEARTBEAT_INTERVAL_MS": "300",
}
READY = {
    "idle": [r"→ consuming", r"→ scheduled"],
    "inflight": [r"BENCH in-flight"],
}


@dataclass
class Stop:
    """One SIGTERM of one app."""

    case: str
    seconds: float  # SIGTERM -> exit
    exit_code: int
    after_work: float | None = None  # the last handler's end -> exit
    finished: int | None = None  # handlers that finished after SIGTERM
    committed_all: bool | None = None


@dataclass
class Figures:
    """Every SIGTERM of every case."""

    stops: list[Stop] = field(default_factory=list)

    def case(self, name: str) -> list[Stop]:
        return [stop for stop in self.stops if stop.case == name]

    def summary(self) -> dict[str, dict[str, Any]]:
        out = {}
        for name in dict.fromkeys(stop.case for stop in self.stops):
            stops = self.case(name)
            seconds = [stop.seconds for stop in stops]
            entry: dict[str, Any] = {
                "rounds": len(stops),
                "median_s": statistics.median(seconds),
                "max_s": max(seconds),
                "exit_codes": sorted({stop.exit_code for stop in stops}),
            }
            if stops[0].after_work is not None:
                entry["after_work_median_s"] = statistics.median(
                    stop.after_work for stop in stops if stop.after_work is not None
                )
                entry["finished"] = [stop.finished for stop in stops]
                entry["committed_all"] = all(stop.committed_all for stop in stops)
            out[name] = entry
        return out


def _exit_after_sigterm(app: AppProcess, timeout: float = 60.0) -> tuple[float, int]:
    """Send SIGTERM; return (seconds to exit, exit code), timed on a pidfd."""
    pidfd = os.pidfd_open(app.pid)
    try:
        sent = time.monotonic()
        app.send(signal.SIGTERM)
        ready, _, _ = select.select([pidfd], [], [], timeout)
        took = time.monotonic() - sent
    finally:
        os.close(pidfd)
    if not ready:
        raise RuntimeError(f"{app.app_ref} did not exit within {timeout}s of SIGTERM")
    return took, app.wait(10)


def stop_idle(broker_url: str, case: str) -> Stop:
    args = ("--app-dir", str(APPS), "--broker", broker_url)
    with AppProcess("shutdown_apps:idle", *args, env=KAFKA_ENV) as app:
        for pattern in READY["idle"]:
            app.wait_for(pattern, timeout=60)
        took, code = _exit_after_sigterm(app)
    return Stop(case, took, code)


async def stop_inflight(bootstrap: str, topic: str) -> Stop:
    group = f"inflight-{uuid.uuid4().hex[:8]}"
    env = KAFKA_ENV | {
        "BENCH_TOPIC": topic,
        "BENCH_GROUP": group,
        "BENCH_SLEEP": str(HANDLER_SLEEP),
    }
    env |= {"BENCH_CONCURRENCY": str(PER_PARTITION), "BENCH_INFLIGHT": str(IN_FLIGHT)}
    args = ("--app-dir", str(APPS), "--broker", f"kafka://{bootstrap}")
    with AppProcess("shutdown_apps:inflight", *args, env=env) as app:
        await asyncio.to_thread(app.wait_for, READY["inflight"][0], 60)
        sent = time.monotonic()
        took, code = await asyncio.to_thread(_exit_after_sigterm, app)
        match = re.search(r"BENCH finished (\d+) ([\d.]+)", app.log)
    if match is None:
        raise RuntimeError(f"the in-flight app did not report what it finished:\n{app.log}")
    finished, last = int(match.group(1)), float(match.group(2))
    committed = await committed_offsets(bootstrap, group, topic, PARTITIONS)
    return Stop(
        "in-flight, kafka",
        took,
        code,
        after_work=sent + took - last,
        finished=finished,
        committed_all=all(committed[p] == PER_PARTITION for p in range(PARTITIONS)),
    )


async def inflight_topic(bootstrap: str) -> str:
    """A topic of 250 records per partition, each with its own key."""
    topic = f"inflight-{uuid.uuid4().hex[:6]}"
    await create_topic(bootstrap, topic, PARTITIONS)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for partition in range(PARTITIONS):
            for number in range(PER_PARTITION):
                key = f"k-{partition}-{number}".encode()
                await producer.send(topic, b'{"n": 1}', key=key, partition=partition)
        await producer.flush()
    finally:
        await producer.stop()
    return topic


async def measure(bootstrap: str, rounds: int, log: Any = print) -> Figures:
    """`rounds` SIGTERMs of each case against the broker at `bootstrap`."""
    figures = Figures()
    topic = await inflight_topic(bootstrap)
    for number in range(1, rounds + 1):
        for stop in (
            await asyncio.to_thread(stop_idle, "memory://", "idle, memory"),
            await asyncio.to_thread(stop_idle, f"kafka://{bootstrap}", "idle, kafka"),
            await stop_inflight(bootstrap, topic),
        ):
            figures.stops.append(stop)
            extra = ""
            if stop.after_work is not None:
                extra = (
                    f" ({stop.after_work:.3f}s after the last handler ended; "
                    f"{stop.finished} finished, all committed: {stop.committed_all})"
                )
            log(
                f"  round {number} {stop.case:<18} SIGTERM to exit {stop.seconds:.3f}s, "
                f"exit code {stop.exit_code}{extra}"
            )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    async def run() -> Figures:
        with TansuBroker() as broker:
            return await measure(broker.bootstrap, args.rounds)

    figures = asyncio.run(run())
    print(json.dumps({"summary": figures.summary(), "stops": [asdict(s) for s in figures.stops]}))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
