"""Rate-limit stores: the Redis store and the in-process one space runs the same way (GCRA)."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from taskflow import StoreError
from taskflow.stores import MemoryRateLimitStore, RateLimitStore, RedisRateLimitStore
from taskflow.stores.connect import redis_client
from taskflow.stores.keys import rate_limit
from tests._redis import REDIS_URL, deployment_url
from tests.stores._twins import TWINS, FakeClock

# Not the flushed test database: a run beside this one would reset a limit mid-test.
LIMITS_URL = os.environ.get("TASKFLOW_TEST_REDIS_LIMITS") or (
    urlsplit(REDIS_URL)._replace(path="/14").geturl()
)
INTERVAL = 0.2  # five runs a second
TOLERANCE = 0.01


@dataclass
class Harness:
    store: RateLimitStore
    key: str
    wait: Callable[[float], Awaitable[None]]
    """Let `seconds` pass on the store's clock."""


@pytest.fixture(params=TWINS)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    key = rate_limit(f"shop-{uuid.uuid4().hex[:8]}", "on_order")
    if request.param == "memory":
        clock = FakeClock(100.0)

        async def advance(seconds: float) -> None:
            clock.now += seconds

        yield Harness(MemoryRateLimitStore(clock), key, advance)
        return
    # The machine's Redis: not the flushed test database. The private deployments: flushed.
    url = LIMITS_URL if request.param == "redis" else deployment_url(request, request.param)
    async with redis_client(url) as client:
        assert client is not None
        yield Harness(RedisRateLimitStore(client), key, asyncio.sleep)


async def test_the_first_run_goes_and_the_next_waits_one_interval(harness: Harness) -> None:
    assert await harness.store.acquire(harness.key, INTERVAL, TOLERANCE) == 0.0
    wait = await harness.store.acquire(harness.key, INTERVAL, TOLERANCE)
    # One interval less the tolerance, less the little time the Redis round trip took.
    assert INTERVAL - TOLERANCE - 0.05 < wait <= INTERVAL - TOLERANCE + 1e-6


async def test_after_waiting_the_run_goes(harness: Harness) -> None:
    await harness.store.acquire(harness.key, INTERVAL, TOLERANCE)
    wait = await harness.store.acquire(harness.key, INTERVAL, TOLERANCE)
    await harness.wait(wait + 0.001)
    assert await harness.store.acquire(harness.key, INTERVAL, TOLERANCE) == 0.0


async def test_idle_does_not_turn_into_a_burst(harness: Harness) -> None:
    await harness.store.acquire(harness.key, INTERVAL, TOLERANCE)
    await harness.wait(INTERVAL * 3)
    assert await harness.store.acquire(harness.key, INTERVAL, TOLERANCE) == 0.0
    assert await harness.store.acquire(harness.key, INTERVAL, TOLERANCE) > INTERVAL / 2


async def test_limits_under_different_keys_do_not_share(harness: Harness) -> None:
    await harness.store.acquire(harness.key, INTERVAL, TOLERANCE)
    other = harness.key.replace("on_order", "on_refund")
    assert await harness.store.acquire(other, INTERVAL, TOLERANCE) == 0.0


async def test_both_stores_satisfy_the_protocol(harness: Harness) -> None:
    assert isinstance(harness.store, RateLimitStore)


@pytest.mark.redis
async def test_the_redis_store_raises_store_error_when_redis_is_down() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = Redis(port=port, retry=Retry(NoBackoff(), 0))
    try:
        with pytest.raises(StoreError, match=r"booking a run under .* failed"):
            await RedisRateLimitStore(client).acquire("taskflow:{a:b}:ratelimit", 1.0, 0.01)
    finally:
        await client.aclose()
