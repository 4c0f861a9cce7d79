"""Where the tests' Redis lives: its own database on the machine's server, flushed per test;
and the private Cluster and Sentinel deployments (``tests/conftest.py`` starts them)."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import pytest

from taskflow.stores.connect import redis_client

if TYPE_CHECKING:
    from taskflow.stores.connect import RedisClient
    from tests._redis_deployments import RedisCluster, RedisSentinel

REDIS_URL = os.environ.get("TASKFLOW_TEST_REDIS", "redis://127.0.0.1:6379/15")


DEPLOYMENTS = ("redis", "cluster", "sentinel")
"""The Redis deployments a store's contract runs against, besides its memory twin."""


def deployment_url(request: pytest.FixtureRequest, deployment: str) -> str:
    """The URL of `deployment` (``redis``, ``cluster`` or ``sentinel``), started if need be."""
    if deployment == "cluster":
        cluster: RedisCluster = request.getfixturevalue("redis_cluster")
        return cluster.url
    if deployment == "sentinel":
        sentinel: RedisSentinel = request.getfixturevalue("redis_sentinel")
        return sentinel.url
    return REDIS_URL


@asynccontextmanager
async def deployment_client(url: str) -> AsyncIterator[RedisClient]:
    """A client of `url`, opened as taskflow opens it, with the database flushed."""
    async with redis_client(url) as client:
        assert client is not None
        await client.flushdb()
        yield client
