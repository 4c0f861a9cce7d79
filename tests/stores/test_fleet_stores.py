"""Fleet stores: the Redis store and the in-process one list live replicas, and keep the ones
whose snapshot expired or was withdrawn as gone, the same way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace

import pytest

from taskflow.stores.fleet import SEEN_TTL, FleetStore, MemoryFleetStore, Snapshot
from taskflow.stores.redis_fleet import RedisFleetStore
from tests._redis import deployment_client, deployment_url
from tests.stores._twins import TWINS, FakeClock

APP = "billing"
TTL = 0.3  # Redis expires keys on its own clock: short, so expiry tests stay quick


@dataclass
class Harness:
    store: FleetStore
    other: FleetStore
    """Another reader: same app, same Redis (or the same process's dicts)."""
    expire: Callable[[float], Awaitable[None]]
    now: Callable[[], float]


@pytest.fixture(params=TWINS)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        clock = FakeClock(time.time())

        async def advance(seconds: float) -> None:
            clock.now += seconds

        store = MemoryFleetStore(APP, clock=clock)
        yield Harness(store, store, advance, clock)
        return
    async with deployment_client(deployment_url(request, request.param)) as client:
        yield Harness(
            RedisFleetStore(client, APP), RedisFleetStore(client, APP), asyncio.sleep, time.time
        )


def snapshot(harness: Harness, pid: int, state: str = "running") -> Snapshot:
    return Snapshot(
        replica=f"web-1:{pid}:abcd",
        host="web-1",
        pid=pid,
        instance_id=None,
        version="0.1.0",
        started=harness.now() - 60,
        published=harness.now(),
        state=state,
        status={"app": APP, "workers": [{"name": "orders", "lag": 3}]},
    )


async def test_published_snapshots_are_the_fleet_with_their_status(harness: Harness) -> None:
    first, second = snapshot(harness, 2), snapshot(harness, 1)
    await harness.store.publish(first, TTL * 100)
    await harness.store.publish(second, TTL * 100)

    members = await harness.other.members()

    assert [(m.snapshot.pid, m.gone) for m in members] == [(1, False), (2, False)]
    assert members[1].snapshot.status["workers"] == [{"name": "orders", "lag": 3}]


async def test_an_expired_snapshot_leaves_its_replica_listed_as_gone(harness: Harness) -> None:
    await harness.store.publish(snapshot(harness, 1), TTL)
    await harness.store.publish(snapshot(harness, 2), TTL * 100)

    await harness.expire(TTL * 2)
    members = await harness.other.members()

    assert [(m.snapshot.pid, m.gone) for m in members] == [(2, False), (1, True)]
    gone = members[1]
    assert gone.snapshot.status == {}
    assert gone.snapshot.state == "running"  # what it was when last seen: it did not stop


async def test_a_withdrawn_snapshot_is_gone_at_once_and_says_it_stopped(harness: Harness) -> None:
    live = snapshot(harness, 1)
    await harness.store.publish(live, TTL * 100)

    await harness.store.withdraw(replace(live, state="stopped", status={}))
    members = await harness.other.members()

    assert [(m.snapshot.pid, m.gone, m.snapshot.state) for m in members] == [(1, True, "stopped")]


async def test_a_replica_not_seen_for_the_seen_ttl_is_forgotten(harness: Harness) -> None:
    old = replace(snapshot(harness, 1), published=harness.now() - SEEN_TTL - 1)
    await harness.store.publish(old, TTL)
    await harness.store.publish(snapshot(harness, 2), TTL * 100)

    await harness.expire(TTL * 2)

    assert [m.snapshot.pid for m in await harness.other.members()] == [2]


async def test_an_app_nobody_published_for_has_no_fleet(harness: Harness) -> None:
    assert await harness.other.members() == []
