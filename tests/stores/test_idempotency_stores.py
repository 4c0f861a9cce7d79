"""Idempotency stores: the Redis store and the in-process one answer claims the same way."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from taskflow import ConfigurationError, StoreError
from taskflow.stores import (
    ClaimOutcome,
    IdempotencyStore,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
)
from tests._redis import REDIS_URL, deployment_client, deployment_url
from tests.stores._twins import TWINS, FakeClock

LEASE = 0.2  # Redis leases run on the server's clock: short, so expiry tests stay quick
KEY = "taskflow:{billing}:idem:order-1"


def key(identity: str) -> str:
    """A key of KEY's consumer group: a batch's keys share its hash tag, as on a cluster."""
    return f"taskflow:{{billing}}:idem:{identity}"


@dataclass
class Harness:
    store: IdempotencyStore
    expire: Callable[[float], Awaitable[None]]
    """Let `seconds` pass on the store's clock."""


@pytest.fixture(params=TWINS)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        clock = FakeClock()

        async def advance(seconds: float) -> None:
            clock.now += seconds

        yield Harness(MemoryIdempotencyStore(clock), advance)
        return

    async def wait(seconds: float) -> None:
        await asyncio.sleep(seconds)  # Redis expires keys on its own clock; nothing to wait on

    async with deployment_client(deployment_url(request, request.param)) as client:
        yield Harness(RedisIdempotencyStore(client), wait)


async def test_a_free_key_is_claimed_and_then_in_progress_for_others(harness: Harness) -> None:
    store = harness.store

    assert await store.claim(KEY, "a", LEASE) is ClaimOutcome.CLAIMED
    assert await store.claim(KEY, "b", LEASE) is ClaimOutcome.IN_PROGRESS
    assert 0 < await store.remaining(KEY) <= LEASE + 1e-9


async def test_the_owner_of_a_claim_that_got_no_answer_can_claim_it_again(harness: Harness) -> None:
    # A claim can land in Redis while its answer is lost (a timeout); the middleware then retries
    # as the same owner, which must get the claim back rather than wait out its own lease.
    store = harness.store
    assert await store.claim(KEY, "a", LEASE) is ClaimOutcome.CLAIMED
    assert await store.claim(KEY, "a", LEASE) is ClaimOutcome.CLAIMED
    assert await store.claim(KEY, "b", LEASE) is ClaimOutcome.IN_PROGRESS
    assert await store.complete(KEY, "a", LEASE)
    assert await store.claim(KEY, "a", LEASE) is ClaimOutcome.DONE  # done stays done, for everyone


async def test_a_completed_key_is_done_for_everyone_until_its_retention_ends(
    harness: Harness,
) -> None:
    store = harness.store
    await store.claim(KEY, "a", LEASE)

    assert await store.complete(KEY, "a", retention=3 * LEASE) is True
    assert await store.claim(KEY, "b", LEASE) is ClaimOutcome.DONE
    assert await store.claim(KEY, "a", LEASE) is ClaimOutcome.DONE
    assert LEASE < await store.remaining(KEY) <= 3 * LEASE + 1e-9
    await harness.expire(LEASE * 1.5)
    assert (
        await store.claim(KEY, "b", LEASE) is ClaimOutcome.DONE
    )  # past the lease, within retention
    await harness.expire(LEASE * 2)
    assert await store.claim(KEY, "b", LEASE) is ClaimOutcome.CLAIMED  # retention over: forgotten


async def test_a_released_key_can_be_claimed_again_at_once(harness: Harness) -> None:
    store = harness.store
    await store.claim(KEY, "a", LEASE)

    assert await store.release(KEY, "a") is True
    assert await store.remaining(KEY) == 0.0
    assert await store.claim(KEY, "b", LEASE) is ClaimOutcome.CLAIMED


async def test_only_the_owner_can_complete_release_or_extend(harness: Harness) -> None:
    store = harness.store
    await store.claim(KEY, "a", LEASE)

    assert await store.complete(KEY, "b", 60) is False
    assert await store.release(KEY, "b") is False
    assert await store.extend(KEY, "b", 60) is False
    assert await store.claim(KEY, "c", LEASE) is ClaimOutcome.IN_PROGRESS  # a's claim is untouched
    assert await store.remaining(KEY) <= LEASE + 1e-9
    assert await store.complete(KEY, "a", 60) is True


async def test_an_extended_lease_outlives_the_original(harness: Harness) -> None:
    store = harness.store
    await store.claim(KEY, "a", LEASE)

    assert await store.extend(KEY, "a", 4 * LEASE) is True
    await harness.expire(LEASE * 1.5)
    assert await store.claim(KEY, "b", LEASE) is ClaimOutcome.IN_PROGRESS
    assert await store.complete(KEY, "a", 60) is True


async def test_a_lost_lease_never_touches_the_new_owners_claim(harness: Harness) -> None:
    store = harness.store
    await store.claim(KEY, "a", LEASE)
    await harness.expire(LEASE * 1.5)  # a stalls past its lease

    assert await store.claim(KEY, "b", LEASE * 3) is ClaimOutcome.CLAIMED
    assert await store.extend(KEY, "a", 60) is False
    assert await store.complete(KEY, "a", 60) is False
    assert await store.release(KEY, "a") is False
    assert await store.claim(KEY, "c", LEASE) is ClaimOutcome.IN_PROGRESS  # still b's
    assert await store.complete(KEY, "b", 60) is True
    assert await store.claim(KEY, "c", LEASE) is ClaimOutcome.DONE


async def test_a_claim_that_is_never_completed_expires_with_its_lease(harness: Harness) -> None:
    store = harness.store
    await store.claim(KEY, "crashed", LEASE)
    await harness.expire(LEASE * 1.5)

    assert await store.remaining(KEY) == 0.0
    assert await store.claim(KEY, "next", LEASE) is ClaimOutcome.CLAIMED


async def test_keys_are_independent(harness: Harness) -> None:
    store = harness.store
    await store.claim(KEY, "a", LEASE)
    await store.complete(KEY, "a", 60)

    assert await store.claim(KEY + "-2", "a", LEASE) is ClaimOutcome.CLAIMED


async def test_both_stores_satisfy_the_protocol(harness: Harness) -> None:
    assert isinstance(harness.store, IdempotencyStore)


# -- Redis only ------------------------------------------------------------------------------


@pytest.mark.redis
async def test_redis_keeps_the_owner_then_a_done_mark_with_the_retention_as_expiry() -> None:
    client = Redis.from_url(REDIS_URL)
    await client.flushdb()
    try:
        store = RedisIdempotencyStore(client)
        await store.claim(KEY, "host:1:abc:7", 30)
        assert await client.get(KEY) == b"host:1:abc:7"
        assert 29_000 < await client.pttl(KEY) <= 30_000

        await store.complete(KEY, "host:1:abc:7", 7 * 24 * 3600)
        assert await client.get(KEY) == b"done:host:1:abc:7"
        assert 7 * 24 * 3600 * 1000 - 5000 < await client.pttl(KEY) <= 7 * 24 * 3600 * 1000
    finally:
        await client.aclose()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_redis_raises_store_error_from_every_call() -> None:
    client = Redis(port=closed_port(), retry=Retry(NoBackoff(), 0))
    store = RedisIdempotencyStore(client)
    try:
        calls = [
            store.claim(KEY, "a", 1),
            store.complete(KEY, "a", 1),
            store.release(KEY, "a"),
            store.extend(KEY, "a", 1),
            store.remaining(KEY),
            store.complete_with(KEY, "a", 1, store.transaction()),
        ]
        for call in calls:
            with pytest.raises(StoreError, match=KEY):
                await call
        with pytest.raises(StoreError, match=KEY):  # a claim names its key, one or many
            await store.claim_many([KEY, key("order-2")], "a", 1)
        batches = [
            store.complete_many([(KEY, "a")], 1),
            store.release_many([(KEY, "a")]),
        ]
        for call in batches:
            with pytest.raises(StoreError, match=r"1 key\(s\) failed"):
                await call
    finally:
        await client.aclose()


# -- memory only -----------------------------------------------------------------------------


async def test_the_memory_store_says_once_that_it_is_in_process_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = MemoryIdempotencyStore()
    with caplog.at_level(logging.WARNING, logger="taskflow.idempotency"):
        await store.claim("k1", "a", 1)
        await store.claim("k2", "a", 1)

    lines = [r.getMessage() for r in caplog.records if r.name == "taskflow.idempotency"]
    assert len(lines) == 1
    assert "in-process store" in lines[0]
    assert "not shared with other processes" in lines[0]


async def test_the_memory_store_forgets_expired_keys() -> None:
    clock = FakeClock()
    store = MemoryIdempotencyStore(clock)
    for i in range(1500):
        await store.claim(f"k{i}", "a", 1)
    clock.now += 2
    for i in range(1500, 2000):  # passes a sweep
        await store.claim(f"k{i}", "a", 1)

    assert len(store) == 500
    assert len(store._entries) < 1000


async def test_a_batch_claim_answers_each_key_as_a_single_claim_would(harness: Harness) -> None:
    store = harness.store
    await store.claim(key("done"), "x", LEASE)
    await store.complete(key("done"), "x", 60)
    await store.claim(key("held"), "y", LEASE)

    outcomes = await store.claim_many([key("free"), key("done"), key("held")], "a", LEASE)

    assert outcomes == [ClaimOutcome.CLAIMED, ClaimOutcome.DONE, ClaimOutcome.IN_PROGRESS]
    assert await store.claim(key("free"), "b", LEASE) is ClaimOutcome.IN_PROGRESS  # now a's
    assert await store.claim_many([], "a", LEASE) == []


async def test_a_batch_claimed_again_by_its_owner_after_a_lost_answer_is_still_its_own(
    harness: Harness,
) -> None:
    store = harness.store
    assert await store.claim_many([key("k1"), key("k2")], "a", LEASE) == [ClaimOutcome.CLAIMED] * 2

    assert await store.claim_many([key("k1"), key("k2")], "a", LEASE) == [ClaimOutcome.CLAIMED] * 2
    assert await store.claim_many([key("k1")], "b", LEASE) == [ClaimOutcome.IN_PROGRESS]


async def test_batch_completions_and_releases_are_owner_checked_per_key(harness: Harness) -> None:
    store = harness.store
    await store.claim_many([key("k1"), key("k2"), key("k3")], "a", LEASE)

    assert await store.complete_many([(key("k1"), "a"), (key("k2"), "b")], 60) == [True, False]
    assert await store.release_many([(key("k2"), "b"), (key("k3"), "a")]) == [False, True]
    assert await store.claim_many([key("k1"), key("k2"), key("k3")], "c", LEASE) == [
        ClaimOutcome.DONE,
        ClaimOutcome.IN_PROGRESS,  # still a's: b could neither complete nor release it
        ClaimOutcome.CLAIMED,
    ]
    assert await store.complete_many([], 60) == []
    assert await store.release_many([]) == []


# -- effects written with the done mark (Redis only) -----------------------------------------


@pytest.fixture
async def redis_store(redis: Redis) -> RedisIdempotencyStore:
    return RedisIdempotencyStore(redis)


@pytest.mark.redis
async def test_effects_land_with_the_done_mark(
    redis: Redis, redis_store: RedisIdempotencyStore
) -> None:
    await redis_store.claim(KEY, "a", 5)
    effects = redis_store.transaction()
    effects.incr("effect:count")
    effects.hset("effect:hash", "field", "value")

    assert await redis_store.complete_with(KEY, "a", 60, effects) is True
    assert await redis.get("effect:count") == b"1"
    assert await redis.hget("effect:hash", "field") == b"value"
    assert await redis.get(KEY) == b"done:a"


@pytest.mark.redis
async def test_effects_of_a_lost_claim_are_dropped(
    redis: Redis, redis_store: RedisIdempotencyStore
) -> None:
    await redis_store.claim(KEY, "a", LEASE)
    await asyncio.sleep(LEASE * 1.5)  # a stalls past its lease, and b takes the key over
    assert await redis_store.claim(KEY, "b", 5) is ClaimOutcome.CLAIMED
    effects = redis_store.transaction()
    effects.incr("effect:count")

    assert await redis_store.complete_with(KEY, "a", 60, effects) is False
    assert await redis.get("effect:count") is None
    assert await redis.get(KEY) == b"b"  # b's claim untouched


@pytest.mark.redis
async def test_effects_are_dropped_when_the_key_changes_between_check_and_write(
    redis: Redis, redis_store: RedisIdempotencyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The WATCH: the key passes the owner check, then changes before EXEC (here, another client
    # takes it over in that gap), and EXEC must apply nothing.
    await redis_store.claim(KEY, "a", 5)
    other = Redis.from_url(REDIS_URL)
    effects = redis_store.transaction()
    effects.incr("effect:count")
    real_get = Pipeline.get

    async def get_then_interfere(self: Pipeline, name: str) -> object:
        value = await real_get(self, name)
        await other.set(KEY, "b", px=5000)
        return value

    monkeypatch.setattr(Pipeline, "get", get_then_interfere)
    try:
        assert await redis_store.complete_with(KEY, "a", 60, effects) is False
    finally:
        monkeypatch.undo()
        await other.aclose()
    assert await redis.get("effect:count") is None
    assert await redis.get(KEY) == b"b"


@pytest.mark.redis
async def test_batch_writes_still_work_after_redis_forgets_its_scripts(
    redis: Redis, redis_store: RedisIdempotencyStore
) -> None:
    await redis_store.claim_many(["k1", "k2"], "a", 5)
    await redis.script_flush()  # as after a Redis restart

    assert await redis_store.complete_many([("k1", "a"), ("k2", "b")], 60) == [True, False]
    assert await redis.get("k1") == b"done:a"


# -- ctx.transaction on a Redis Cluster ---------------------------------------------------------


@pytest.fixture
async def cluster_store(request: pytest.FixtureRequest) -> AsyncIterator[RedisIdempotencyStore]:
    async with deployment_client(deployment_url(request, "cluster")) as client:
        yield RedisIdempotencyStore(client)


@pytest.mark.redis
async def test_on_a_cluster_effects_under_the_claims_hash_tag_land_with_the_done_mark(
    cluster_store: RedisIdempotencyStore,
) -> None:
    await cluster_store.claim(KEY, "a", 5)
    effects = cluster_store.transaction()
    effects.incr("{billing}:count")
    effects.hset("{billing}:totals", "eur", "12")

    assert await cluster_store.complete_with(KEY, "a", 60, effects) is True
    client = cluster_store.client
    assert await client.get("{billing}:count") == b"1"
    assert await client.hget("{billing}:totals", "eur") == b"12"
    assert await client.get(KEY) == b"done:a"


@pytest.mark.redis
async def test_on_a_cluster_an_effect_outside_the_claims_hash_tag_is_refused_whole(
    cluster_store: RedisIdempotencyStore,
) -> None:
    await cluster_store.claim(KEY, "a", 5)
    effects = cluster_store.transaction()
    effects.incr("{billing}:count")
    effects.incr("orders:count")  # another slot than {billing}

    with pytest.raises(ConfigurationError) as caught:
        await cluster_store.complete_with(KEY, "a", 60, effects)

    assert str(caught.value) == (
        "ctx.transaction on a Redis Cluster writes only keys with the hash tag of "
        "taskflow:{billing}:idem:order-1: name them '{billing}…' (nothing was written)"
    )
    client = cluster_store.client
    assert await client.get("{billing}:count") is None
    assert await client.get("orders:count") is None
    assert await client.get(KEY) == b"a"  # still a's claim: the lease decides what happens next
