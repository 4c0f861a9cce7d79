"""Redis goes away for 10 s under an idempotent consumer: nothing is lost, nothing committed early.

The app (a ``taskflow run`` child, ``on_store_error="fail"``) keeps its claims in a private
``redis-server`` that the test takes away mid-stream while messages keep coming, in two ways:

- ``killed``: SIGKILL, then a new server on the same port. Connections are refused at once. That
  server keeps nothing on disk, so the restart forgets every done mark: a message handled before
  the outage and redelivered after it would run again. That is acceptable here (no rebalance or
  restart redelivers anything in this test).
- ``hung``: SIGSTOP, then SIGCONT. The server accepts connections but answers nothing, so each
  call waits for the client's socket timeout; it keeps its data.

Either way no message may be lost, no offset committed past a message that was not handled, and the
same process must resume alone once Redis answers.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from taskflow.runner import EXIT_CLEAN
from taskflow.stores.connect import REDIS_TIMEOUT
from tests._process import AppProcess, count_lines, wait_until
from tests._redis_server import RedisServer
from tests._tansu import committed_offsets, create_topic
from tests.kafka.conftest import KAFKA_ENV

pytestmark = pytest.mark.redis

WAIT = 30.0  # seconds: the bound of every wait
PARTITIONS = 4
MESSAGES = 2000
BATCH = 20  # produced every PACE seconds: 2,000 messages over about 15 s
PACE = 0.15
OUTAGE = 10.0  # seconds Redis stays down: the scenario, not a wait for something
GROUP = "outage"
UNAVAILABLE = r"record: the idempotency store is unavailable"
ANSWERS = r"record: the idempotency store answers again"
ORPHANED = r"deferred \(claimed by another worker"
LEASE = 30.0  # taskflow's default idempotency_lease


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A Redis of this test's own, which it may kill and start again."""
    with RedisServer() as server:
        yield server


class Handled:
    """The app's output file: ``<pid> <partition> <offset> <unix time> <value>`` per message."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def rows(self) -> list[tuple[int, int, int, float, str]]:
        if not self.path.exists():
            return []
        rows = []
        for line in self.path.read_text().splitlines():
            pid, partition, offset, at, value = line.split(" ", 4)
            rows.append((int(pid), int(partition), int(offset), float(at), value))
        return rows

    def offsets(self) -> dict[int, set[int]]:
        handled: dict[int, set[int]] = {p: set() for p in range(PARTITIONS)}
        for _, partition, offset, _, _ in self.rows():
            handled[partition].add(offset)
        return handled


async def produce(bootstrap: str, topic: str) -> dict[int, int]:
    """Publish MESSAGES values round-robin, BATCH every PACE s; the end offset of each partition."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    ends: dict[int, int] = {}
    try:
        for start in range(0, MESSAGES, BATCH):
            sent = [
                await producer.send(topic, b"m-%d" % n, partition=n % PARTITIONS)
                for n in range(start, start + BATCH)
            ]
            for meta in await asyncio.gather(*sent):
                ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
            await asyncio.sleep(PACE)  # pacing the stream, not waiting for anything
    finally:
        await producer.stop()
    return ends


def unhandled_below_commit(
    committed: dict[int, int | None], handled: dict[int, set[int]]
) -> dict[int, list[int]]:
    """Per partition, the offsets below the committed one that were never handled."""
    missing = {}
    for partition, offset in committed.items():
        gaps = sorted(set(range(offset or 0)) - handled[partition])
        if gaps:
            missing[partition] = gaps[:10]
    return missing


async def wait_for_commits(bootstrap: str, topic: str, ends: dict[int, int]) -> None:
    committed: dict[int, int | None] = {}
    try:
        async with asyncio.timeout(WAIT):
            while True:
                committed = await committed_offsets(bootstrap, GROUP, topic, PARTITIONS)
                if committed == ends:
                    return
                await asyncio.sleep(0.2)  # polled: only the broker knows what the app committed
    except TimeoutError:
        raise AssertionError(f"committed {committed}, expected {ends}") from None


@pytest.mark.parametrize("outage", ["killed", "hung"])
async def test_redis_down_for_10_s_loses_nothing_and_the_app_resumes_by_itself(
    outage: str, redis_server: RedisServer, bootstrap: str, unique: str, tmp_path: Path
) -> None:
    topic, out = f"{unique}-events", tmp_path / "handled.txt"
    handled = Handled(out)
    await create_topic(bootstrap, topic, PARTITIONS)
    env = {
        "TASKFLOW_BROKER": f"kafka://{bootstrap}",
        **KAFKA_ENV,
        "TASKFLOW_REDIS_URL": redis_server.url,
        "OUTAGE_TOPIC": topic,
        "OUTAGE_OUT": str(out),
    }
    with AppProcess("tests.apps.outage_recorder:app", env=env) as app:
        stream = asyncio.create_task(produce(bootstrap, topic))
        try:
            # Take Redis away once the stream is well under way (about a quarter of it handled).
            await asyncio.to_thread(
                wait_until, lambda: count_lines(out) >= MESSAGES // 4, WAIT, "a quarter handled"
            )
            if outage == "killed":
                redis_server.stop(graceful=False)
            else:
                redis_server.pause()
            killed = time.time()

            # While Redis is down, sample what the app committed: never past what it handled.
            # Committed offsets are read first, then the handled file, which can only grow.
            samples = 0
            outage_ends = time.monotonic() + OUTAGE
            while time.monotonic() < outage_ends:
                committed = await committed_offsets(bootstrap, GROUP, topic, PARTITIONS)
                missing = unhandled_below_commit(committed, handled.offsets())
                assert not missing, f"committed {committed} past unhandled offsets {missing}"
                samples += 1
                await asyncio.sleep(0.5)  # sampling another process's commits
            await asyncio.to_thread(app.wait_for, UNAVAILABLE, WAIT)

            # Redis is back from the moment it is started: the app may reach it before start()
            # has seen it answer, so the outage ends as the server starts, not once it answers.
            restarted = time.time()
            if outage == "killed":
                redis_server.start()  # same port, and empty: every done mark is gone
            else:
                redis_server.resume()
            await asyncio.to_thread(app.wait_for, ANSWERS, WAIT)
            answered = time.time()
            ends = await asyncio.wait_for(stream, WAIT)
        finally:
            stream.cancel()

        wanted = {p: set(range(end)) for p, end in ends.items()}
        await asyncio.to_thread(
            wait_until,
            lambda: all(wanted[p] <= handled.offsets()[p] for p in wanted),
            WAIT + LEASE,  # an orphaned claim (see ORPHANED) holds its message for a lease
            "every produced message handled",
        )
        await wait_for_commits(bootstrap, topic, ends)
        assert app.proc.poll() is None
        assert app.stop(signal.SIGTERM, timeout=WAIT) == EXIT_CLEAN

    rows = handled.rows()
    after = [at for _, _, _, at, _ in rows if at >= restarted]
    handled_in_outage = sum(1 for _, _, _, at, _ in rows if killed < at < restarted)
    first_after = min(after) if after else float("nan")
    print(
        f"\n{outage}: Redis down {restarted - killed:.1f}s; "
        f"'answers again' {answered - restarted:.1f}s and first message handled "
        f"{first_after - restarted:.1f}s after the restart; {samples} commit samples; "
        f"{handled_in_outage} handled during the outage; {len(rows)} handled in all"
    )
    assert samples > 0
    assert {pid for pid, *_ in rows} == {app.pid}  # one process all along: it resumed alone
    assert after, "nothing was handled after Redis came back"
    # Nothing runs once the store is known to be down. Until a call fails (at once when Redis is
    # killed; after the call timeout when it hangs) the records of batches claimed before the
    # outage may still run, on their partitions' leases, and their finishes wait for Redis.
    in_outage = [at for _, _, _, at, _ in rows if killed < at < restarted]
    assert max(in_outage, default=killed) - killed <= REDIS_TIMEOUT + 2.0
    # One error line says the store went, one line says it came back: not one per message.
    assert len(re.findall(UNAVAILABLE, app.log)) == 1
    assert len(re.findall(ANSWERS, app.log)) == 1
    # Besides, at most one "ran but could not be marked done" per partition (the in-flight ones).
    errors = [line for line in app.lines if " ERROR " in line and "aiokafka" not in line]
    assert len(errors) <= 1 + PARTITIONS, "\n".join(errors)
    if "OUTAGE_SHOW_LOG" in os.environ:
        print("\n".join(line for line in app.lines if "aiokafka" not in line))
    assert "crashed" not in app.log
    # The app is the only consumer: a claim held by "another worker" is one of its own claims
    # that timed out client-side and then landed in Redis anyway.
    orphaned = [line for line in app.lines if re.search(ORPHANED, line)]
    assert not orphaned, "\n".join(orphaned[:PARTITIONS])
    assert "stopped cleanly" in app.log
