"""The memory budget on a real broker: what a `taskflow run` process holds, measured by the kernel.

A slow consumer of 64 partitions of 100 KB records runs as a real process, on a topic filled
before it starts (a backlog, as after an outage: the most a consumer can fetch at once). Its peak
resident memory (VmHWM in /proc/<pid>/status) once every record is handled is compared with the
baseline: the peak of the same app with the same flags, started on an empty topic and idle once
assigned its 64 partitions (everything imported, the group joined, the fetchers running; nothing
fetched). Run with ``pytest -s`` to see the figures.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests._process import AppProcess, count_lines, wait_until
from tests._tansu import create_topic

BULKY = "tests.apps.bulky:app"
MiB = 2**20
PARTITIONS = 64
RECORD = 100_000  # bytes of each value
PER_PARTITION = 24  # 1536 records, 153.6 MB in all
BUDGET = 32 * MiB
IDLE = 3.0  # seconds an idle baseline run polls its empty partitions


def high_water(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def mib(size: int) -> str:
    return f"{size / MiB:.1f} MiB"


async def produce(bootstrap: str, topic: str, per_partition: int, size: int) -> int:
    """Write `per_partition` records of `size` bytes to every partition; return how many."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=20)
    await producer.start()
    try:
        sent = [
            await producer.send(topic, bytes(size), partition=partition)
            for _ in range(per_partition)
            for partition in range(PARTITIONS)
        ]
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return len(sent)


def bulky_env(app_env: dict[str, str], topic: str, group: str, out: Path) -> dict[str, str]:
    return {
        **app_env,
        "BULKY_TOPIC": topic,
        "BULKY_GROUP": group,
        "BULKY_OUT": str(out),
        "BULKY_DELAY_MS": "200",
    }


async def stop(app: AppProcess) -> None:
    app.send(signal.SIGTERM)
    assert await asyncio.to_thread(app.wait, 30) == 0


async def idle_peak(env: dict[str, str], *flags: str) -> int:
    """The peak of the app assigned every partition of an empty topic, after polling a while."""
    with AppProcess(BULKY, *flags, env=env) as app:
        await asyncio.to_thread(app.wait_for, r"assigned \S+\[\d+\]", 60)
        await asyncio.sleep(IDLE)
        peak = high_water(app.pid)
        await stop(app)
    return peak


async def backlog_peak(env: dict[str, str], count: int, *flags: str) -> int:
    """The peak of the app once it has handled all `count` records of its full topic."""
    out = Path(env["BULKY_OUT"])
    with AppProcess(BULKY, *flags, env=env) as app:
        await asyncio.to_thread(
            wait_until, lambda: count_lines(out) >= count, 180, "every record handled"
        )
        peak = high_water(app.pid)
        await stop(app)
    return peak


@pytest.mark.timeout(400)
async def test_a_process_holds_no_more_than_its_memory_budget(
    app_env: dict[str, str], bootstrap: str, unique: str, tmp_path: Path
) -> None:
    empty, full = f"{unique}-empty", f"{unique}-full"
    await create_topic(bootstrap, empty, PARTITIONS)
    await create_topic(bootstrap, full, PARTITIONS)
    count = await produce(bootstrap, full, PER_PARTITION, RECORD)
    budget = ("--buffer-bytes", "32MiB")

    baseline = await idle_peak(bulky_env(app_env, empty, f"{unique}-idle", tmp_path / "i"), *budget)
    budgeted = await backlog_peak(
        bulky_env(app_env, full, f"{unique}-a", tmp_path / "a"), count, *budget
    )
    unbounded = await backlog_peak(
        bulky_env(app_env, full, f"{unique}-b", tmp_path / "b"), count, "--buffer-bytes", "1TiB"
    )

    print(
        f"\n{PARTITIONS} partitions x {PER_PARTITION} records of {RECORD} bytes, a backlog of "
        f"{mib(count * RECORD)}, 200 ms per record; peak RSS (VmHWM):"
        f"\n  idle, assigned, nothing fetched (baseline): {mib(baseline)}"
        f"\n  --buffer-bytes 32MiB: {mib(budgeted)} = baseline + {mib(budgeted - baseline)}"
        f"\n  --buffer-bytes 1TiB:  {mib(unbounded)} = baseline + {mib(unbounded - baseline)}"
    )
    assert budgeted - baseline <= BUDGET
    # How far a run without a budget gets ahead of its handlers varies with the machine: nearly the
    # whole backlog when fetching is fast. Past the budget in any case, which kept the first small.
    assert unbounded - baseline > BUDGET


async def test_a_record_larger_than_the_budget_is_handled_and_fetching_resumes(
    app_env: dict[str, str], bootstrap: str, unique: str, tmp_path: Path
) -> None:
    topic, out = f"{unique}-large", tmp_path / "large.txt"
    await create_topic(bootstrap, topic, 1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(topic, bytes(1_000_000), partition=0)
        await producer.send_and_wait(topic, b"small", partition=0)
    finally:
        await producer.stop()
    env = {
        **app_env,
        "BULKY_TOPIC": topic,
        "BULKY_GROUP": f"{unique}-group",
        "BULKY_OUT": str(out),
        "BULKY_DELAY_MS": "10",
        "TASKFLOW_BUFFER_BYTES": "1MiB",  # pauses at 512 KiB held; fetches of 64 KiB
    }
    with AppProcess(BULKY, env=env) as app:
        await asyncio.to_thread(wait_until, lambda: count_lines(out) >= 2, 60, "both records")
        app.send(signal.SIGTERM)
        assert await asyncio.to_thread(app.wait, 30) == 0
    assert out.read_text().splitlines() == ["0 0 1000000", "0 1 5"]
