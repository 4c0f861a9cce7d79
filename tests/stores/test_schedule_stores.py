"""Schedule stores: the Redis store and the in-process one answer tick claims, leases and run
records the same way."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from taskflow import StoreError
from taskflow.stores import (
    LastRun,
    MemoryScheduleStore,
    RedisScheduleStore,
    ScheduleStore,
    TickClaim,
)
from tests._redis import REDIS_URL, deployment_client, deployment_url
from tests.stores._twins import TWINS, FakeClock

APP, TASK = "billing", "beat"
LEASE = 0.2  # Redis leases run on the server's clock: short, so expiry tests stay quick
TTL = 60.0
TICK = datetime(2026, 1, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)


@dataclass
class Harness:
    store: ScheduleStore
    """The store under test."""
    other: ScheduleStore
    """Another replica's store: same app, same Redis (or the same process's dicts)."""
    expire: Callable[[float], Awaitable[None]]
    """Let `seconds` pass on the store's clock."""


@pytest.fixture(params=TWINS)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        clock = FakeClock()

        async def advance(seconds: float) -> None:
            clock.now += seconds

        store = MemoryScheduleStore(APP, clock=clock)
        yield Harness(store, store, advance)
        return

    async def wait(seconds: float) -> None:
        await asyncio.sleep(seconds)  # Redis expires keys on its own clock

    async with deployment_client(deployment_url(request, request.param)) as client:
        yield Harness(RedisScheduleStore(client, APP), RedisScheduleStore(client, APP), wait)


async def claim(store: ScheduleStore, owner: str, tick: datetime = TICK) -> tuple[TickClaim, str]:
    return await store.claim(
        TASK, tick, owner, ttl=TTL, lease=LEASE, started=tick, next_tick=tick + SECOND
    )


async def test_the_first_claim_of_a_tick_runs_it_and_the_others_learn_who(
    harness: Harness,
) -> None:
    assert await claim(harness.store, "a:1") == (TickClaim.RUN, "a:1")
    assert await claim(harness.other, "b:1") == (TickClaim.ELSEWHERE, "a:1")
    assert await harness.other.claimer(TASK, TICK) == "a:1"
    assert await harness.other.claimer(TASK, TICK + SECOND) is None
    assert await harness.other.next_run(TASK) == TICK + SECOND


async def test_a_tick_claimed_while_a_run_holds_the_lease_is_busy(harness: Harness) -> None:
    await claim(harness.store, "a:1")
    assert await claim(harness.other, "b:2", TICK + SECOND) == (TickClaim.BUSY, "a:1")
    # The busy tick stays claimed: nobody else runs it either.
    assert await claim(harness.store, "c:3", TICK + SECOND) == (TickClaim.ELSEWHERE, "b:2")


async def test_the_last_run_is_marked_running_then_finished(harness: Harness) -> None:
    assert await harness.store.last_run(TASK) is None
    await claim(harness.store, "a:1")
    running = await harness.other.last_run(TASK)
    assert running == LastRun(TICK, TICK, harness.store.replica, "running", None)
    assert await harness.store.finish(TASK, "a:1", TICK, "ok", 0.25) is True
    last = await harness.other.last_run(TASK)
    assert last is not None
    assert (last.outcome, last.duration) == ("ok", 0.25)
    # The lease is released: the next tick runs at once.
    assert (await claim(harness.other, "b:2", TICK + SECOND))[0] is TickClaim.RUN


async def test_finishing_without_release_keeps_the_lease(harness: Harness) -> None:
    await claim(harness.store, "a:1")
    assert await harness.store.finish(TASK, "a:1", TICK, "ok", 0.1, release=False) is True
    assert await claim(harness.other, "b:2", TICK + SECOND) == (TickClaim.BUSY, "a:1")
    assert await harness.store.release(TASK, "a:1") is True
    assert await harness.store.release(TASK, "a:1") is False


async def test_a_lease_the_owner_holds_counts_as_free_for_its_next_tick(harness: Harness) -> None:
    assert await harness.store.acquire(TASK, "catch-up:1", LEASE) is None
    assert await harness.other.acquire(TASK, "b:2", LEASE) == "catch-up:1"
    assert await claim(harness.store, "catch-up:1") == (TickClaim.RUN, "catch-up:1")
    assert await claim(harness.store, "catch-up:1", TICK + SECOND) == (TickClaim.RUN, "catch-up:1")


async def test_a_lost_lease_is_neither_renewed_nor_released_nor_recorded(
    harness: Harness,
) -> None:
    await claim(harness.store, "a:1")
    assert await harness.store.renew(TASK, "a:1", LEASE) is True
    await harness.expire(LEASE * 1.5)
    assert await harness.store.renew(TASK, "a:1", LEASE) is False
    assert await harness.other.acquire(TASK, "b:2", 60) is None  # another run took it
    assert await harness.store.renew(TASK, "a:1", LEASE) is False
    assert await harness.store.release(TASK, "a:1") is False
    assert await harness.store.finish(TASK, "a:1", TICK, "lost", 1.0) is False
    assert await harness.other.acquire(TASK, "c:3", 60) == "b:2"  # untouched


async def test_a_tick_claim_expires_after_its_ttl(harness: Harness) -> None:
    await harness.store.claim(
        TASK, TICK, "a:1", ttl=LEASE, lease=LEASE, started=TICK, next_tick=TICK + SECOND
    )
    await harness.expire(LEASE * 1.5)
    assert await harness.other.claimer(TASK, TICK) is None


async def test_both_stores_satisfy_the_protocol(harness: Harness) -> None:
    assert isinstance(harness.store, ScheduleStore)


@pytest.mark.redis
async def test_the_redis_store_keeps_one_tasks_keys_under_one_hash_tag() -> None:
    client = Redis.from_url(REDIS_URL)
    await client.flushdb()
    try:
        await claim(RedisScheduleStore(client, APP), "a:1")
        keys = sorted(key.decode() for key in await client.keys("*"))
    finally:
        await client.aclose()
    assert keys == [
        "taskflow:{billing:beat}:last",
        "taskflow:{billing:beat}:next",
        "taskflow:{billing:beat}:running",
        "taskflow:{billing:beat}:tick:1767225600",
    ]


@pytest.mark.redis
async def test_the_redis_store_raises_store_error_when_redis_is_down() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = Redis(port=port, retry=Retry(NoBackoff(), 0))
    store = RedisScheduleStore(client, APP)
    try:
        with pytest.raises(StoreError, match=r"Connection refused|connecting"):
            await claim(store, "a:1")
        with pytest.raises(StoreError):
            await store.last_run(TASK)
    finally:
        await client.aclose()
