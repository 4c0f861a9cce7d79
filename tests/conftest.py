"""Shared test set-up: asyncio debug mode for every loop, and the tests' own Redis database."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis

from tests._redis import REDIS_URL
from tests._redis_deployments import RedisCluster, RedisSentinel

# Read when each event loop is created: slow callbacks and never-awaited coroutines get reported.
os.environ.setdefault("PYTHONASYNCIODEBUG", "1")


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """A client of the tests' Redis database, flushed before the test."""
    client = Redis.from_url(REDIS_URL)
    await client.flushdb()
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisCluster]:
    """A private 3-primary Redis Cluster for the session."""
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinel]:
    """A private primary, replica and Sentinel for the session; tests must not kill them."""
    with RedisSentinel() as deployment:
        yield deployment
