"""Opening the stores of a run: Redis when the app has a URL, the memory twins otherwise.

This is the one place taskflow opens a Redis connection. The runner calls `open_stores` once per
run and hands the `Stores` to every worker and middleware, which never build a store themselves.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from taskflow.config import mask_url
from taskflow.exceptions import ConfigurationError, StoreError
from taskflow.stores.memory_schedule import MemoryScheduleStore

if TYPE_CHECKING:
    from typing import TypeAlias

    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

    from taskflow.redis_url import RedisTarget
    from taskflow.stores.base import IdempotencyStore
    from taskflow.stores.ratelimit import RateLimitStore
    from taskflow.stores.schedule import ScheduleStore

__all__ = ["REDIS_TIMEOUT", "RedisClient", "Stores", "open_stores", "redis_client"]

if TYPE_CHECKING:
    RedisClient: TypeAlias = Redis | RedisCluster
    """A client of one Redis (or the primary behind Sentinel), or of a Redis Cluster."""

REDIS_TIMEOUT = 5.0
"""Seconds before a Redis call (or connecting) fails; the callers then defer or skip the work."""


@dataclass(frozen=True, slots=True)
class Stores:
    """The stores of one run of an app.

    Attributes:
        app_name: The app's name.
        local: The in-process schedule store: periodic tasks with ``fleet=False``, and all of
            them without Redis.
        schedules: The fleet's schedule store (Redis); None without Redis.
        idempotency: Where idempotency claims live: the app's `idempotency_store`, else Redis;
            None when neither is configured.
        rate_limits: Where global rate limits live (Redis); None without Redis.
        client: The Redis client the Redis stores share, or None.
    """

    app_name: str
    local: ScheduleStore
    schedules: ScheduleStore | None = None
    idempotency: IdempotencyStore | None = None
    rate_limits: RateLimitStore | None = None
    client: RedisClient | None = field(default=None, repr=False)

    @classmethod
    def in_process(
        cls,
        app_name: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        idempotency: IdempotencyStore | None = None,
    ) -> Stores:
        """Stores that need no server: the memory schedule store, and `idempotency` if given."""
        return cls(app_name, MemoryScheduleStore(app_name, clock=clock), idempotency=idempotency)

    def schedule_store(self, fleet: bool) -> tuple[ScheduleStore, bool]:
        """The schedule store of a task with `fleet=`, and whether it is shared by the fleet."""
        if fleet and self.schedules is not None:
            return self.schedules, True
        return self.local, False

    async def check(self) -> None:
        """Ask the idempotency store whether it answers, when it can be asked.

        Raises:
            StoreError: when it does not.
        """
        ping = getattr(self.idempotency, "ping", None)
        if ping is not None:
            await ping()


@asynccontextmanager
async def open_stores(
    app_name: str,
    redis_url: str | None,
    *,
    idempotency: IdempotencyStore | None = None,
    username: str | None = None,
    password: str | None = None,
) -> AsyncIterator[Stores]:
    """The stores of one run; with `redis_url`, on one Redis client checked with a PING.

    Args:
        app_name: The app's name, in every key.
        redis_url: The app's Redis URL, or None.
        idempotency: The app's own idempotency store, used instead of Redis for claims.
        username: The Redis user name when the URL has none.
        password: The Redis password when the URL has none.

    Raises:
        ConfigurationError: for a malformed Redis URL.
        StoreError: when Redis cannot be reached.
    """
    local = Stores.in_process(app_name, idempotency=idempotency)
    if not redis_url:
        yield local
        return
    from taskflow.stores.redis import RedisIdempotencyStore
    from taskflow.stores.redis_ratelimit import RedisRateLimitStore
    from taskflow.stores.redis_schedule import RedisScheduleStore

    async with redis_client(redis_url, username=username, password=password) as client:
        assert client is not None
        yield Stores(
            app_name,
            local.local,
            schedules=RedisScheduleStore(client, app_name),
            idempotency=idempotency or RedisIdempotencyStore(client),
            rate_limits=RedisRateLimitStore(client),
            client=client,
        )


@asynccontextmanager
async def redis_client(
    url: str | None, *, username: str | None = None, password: str | None = None
) -> AsyncIterator[RedisClient | None]:
    """A client for `url`, checked with a PING before anything starts; None without a URL.

    ``redis://`` and ``rediss://`` give a `redis.asyncio.Redis`, ``redis+sentinel://`` one whose
    connections go to the primary Sentinel names (again after a failover), and
    ``redis+cluster://`` a `redis.asyncio.cluster.RedisCluster` that starts from the URL's hosts.
    `username` and `password` are used when the URL has none.

    Raises:
        ConfigurationError: for a malformed URL.
        StoreError: when Redis cannot be reached.
    """
    if not url:
        yield None
        return
    from taskflow.redis_url import RedisTarget
    from taskflow.stores.redis import REDIS_ERRORS

    target = RedisTarget.parse(url, "redis_url")
    client, closers = _client(target, username, password)
    try:
        try:
            await client.ping()
        except REDIS_ERRORS as exc:
            raise StoreError(f"cannot reach Redis at {mask_url(url)}: {exc}") from exc
        yield client
    finally:
        await client.aclose()
        for closer in closers:
            await closer.aclose()


def _client(
    target: RedisTarget, username: str | None, password: str | None
) -> tuple[RedisClient, list[Redis]]:
    """The client `target` names, and the Sentinel clients to close after it."""
    # Explicit, so outage behaviour does not change with redis-py's defaults: a hung Redis
    # fails a call after REDIS_TIMEOUT, and the middleware defers the message.
    timeout = REDIS_TIMEOUT
    user = target.username or (None if target.password else username)
    secret = target.password or password
    if target.kind == "single":
        from redis.asyncio import Redis

        extra: dict[str, Any] = {
            k: v for k, v in (("username", user), ("password", secret)) if v is not None
        }
        try:
            client = Redis.from_url(
                target.url, socket_timeout=timeout, socket_connect_timeout=timeout, **extra
            )
        except ValueError as exc:
            raise ConfigurationError(f"malformed Redis URL: {exc}") from None
        return client, []
    if target.kind == "cluster":
        from redis.asyncio.cluster import ClusterNode, RedisCluster

        cluster = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
            username=user,
            password=secret,
            ssl=target.tls,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        return cluster, []
    from redis.asyncio.sentinel import Sentinel

    # Through a typed name: redis-py types Sentinel's constructor only from version 8.
    make_sentinel: Callable[..., Sentinel] = Sentinel
    sentinel = make_sentinel(
        list(target.hosts),
        sentinel_kwargs={
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "ssl": target.tls,
        },
        ssl=target.tls,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    primary: Redis = sentinel.master_for(
        target.service, db=target.db, username=user, password=secret
    )
    return primary, list(sentinel.sentinels)
