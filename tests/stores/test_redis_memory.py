"""What idempotent consumers leave behind in Redis, measured with Redis's own ``MEMORY USAGE``.

A million records run with ``idempotent=True`` and the default key leave one small ledger per
partition: what the store holds follows the partitions, not the records. Records with an
explicit key leave a done mark each, kept for the retention: that is measured too, per key, as
are a periodic task's keys and a global rate limit's, for docs/redis.md.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from taskflow import App, Context, Message
from taskflow.middleware.offsets import LINGER
from taskflow.testing import ManualClock, TestClient
from tests._redis import REDIS_URL

pytestmark = pytest.mark.redis

MILLION = 1_000_000
CHUNK = 50_000  # published, then drained, at a time
PARTITIONS = 4


async def taskflow_memory(redis: Redis, group: str) -> tuple[int, int]:
    """The keys taskflow holds for `group`, and their ``MEMORY USAGE`` in bytes, summed."""
    keys = [key async for key in redis.scan_iter(match=f"taskflow:{{{group}}}:*", count=10_000)]
    total = 0
    for key in keys:
        total += await redis.memory_usage(key, samples=0) or 0
    return len(keys), total


async def run_through(app: App, topic: str, count: int) -> None:
    async with TestClient(app, partitions=PARTITIONS) as client:
        for start in range(0, count, CHUNK):
            for n in range(start, min(start + CHUNK, count)):
                await client.broker.publish(topic, b"%d" % n, key=b"%d" % n)
            await client.drain(timeout=120)
        await asyncio.sleep(LINGER * 4)


@pytest.mark.timeout(600)
async def test_a_million_records_by_offset_leave_under_a_megabyte(redis: Redis) -> None:
    app = App("ledger-million", redis_url=REDIS_URL)
    handled = 0

    async def on_event(message: Message) -> None:
        nonlocal handled
        handled += 1

    app.add_consumer(on_event, "events", group="million", idempotent=True)
    await run_through(app, "events", MILLION)

    keys, used = await taskflow_memory(redis, "million")
    assert handled == MILLION
    assert used < 1_000_000
    for partition in range(PARTITIONS):  # each ledger stands at its partition's end
        ledger = await redis.hgetall(f"taskflow:{{million}}:offsets:events:{partition}")
        assert set(ledger) == {b"base"}
    assert keys == PARTITIONS  # the leases were given up when the consumer stopped
    print(f"\n{MILLION:,} records by offset, {PARTITIONS} partitions: {keys} keys, {used:,} bytes")


async def test_records_with_an_explicit_key_leave_a_done_mark_each(redis: Redis) -> None:
    count = 20_000
    app = App("ledger-keyed", redis_url=REDIS_URL)

    async def on_event(message: Message) -> None:
        pass

    app.add_consumer(
        on_event, "events", group="keyed", idempotent=True, idempotency_key=lambda m: m.value
    )
    await run_through(app, "events", count)

    keys, used = await taskflow_memory(redis, "keyed")
    assert keys == count
    print(
        f"\n{count:,} records with an explicit key: {used / count:.0f} bytes per done mark; "
        f"a million would hold about {used / count * MILLION / 2**20:.0f} MiB for the retention"
    )


async def test_a_periodic_task_and_a_global_rate_limit_hold_a_few_small_keys(
    redis: Redis,
) -> None:
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    app = App("memory-fleet", redis_url=REDIS_URL, clock=clock)
    runs: list[int] = []
    handled: list[int] = []
    ran = asyncio.Event()

    async def beat(ctx: Context) -> None:
        runs.append(1)
        ran.set()

    async def on_order(message: Message) -> None:
        handled.append(1)

    app.add_schedule(beat, 1, name="beat")
    app.add_consumer(on_order, "orders", rate_limit="1000/s", rate_limit_scope="global")
    async with TestClient(app) as client:
        async with asyncio.timeout(30):
            while len(runs) < 10:  # a tick the scheduler was not yet waiting for runs later
                ran.clear()
                await clock.advance(1)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ran.wait(), 1)
        for n in range(10):
            await client.publish("orders", n)
        await client.drain()

    task_keys, task_bytes = await taskflow_memory(redis, "memory-fleet:beat")
    limit_keys, limit_bytes = await taskflow_memory(redis, "memory-fleet:on_order")
    assert len(handled) == 10
    assert task_bytes < 2048
    assert limit_bytes < 128
    print(
        f"\na periodic task after 10 ticks: {task_keys} keys, {task_bytes} bytes; "
        f"a global rate limit: {limit_keys} key, {limit_bytes} bytes"
    )
