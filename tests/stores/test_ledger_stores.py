"""Offset ledgers: the Redis ledger and the in-process one answer the same way, on every
deployment (one Redis, a Cluster, a primary behind Sentinel)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from taskflow import ConfigurationError
from taskflow.message import TopicPartition
from taskflow.stores import MemoryIdempotencyStore, RedisIdempotencyStore
from taskflow.stores.ledger import LedgerState, OffsetLedger, Progress, Span
from taskflow.stores.memory_ledger import MemoryOffsetLedger
from taskflow.stores.redis_ledger import RedisOffsetLedger
from tests._redis import deployment_client, deployment_url
from tests.stores._twins import TWINS, FakeClock

LEASE = 0.3  # Redis leases run on the server's clock: short, so expiry tests stay quick
GROUP = "billing"
P0 = TopicPartition("orders", 0)
P1 = TopicPartition("orders", 1)


@dataclass
class Harness:
    ledger: OffsetLedger
    expire: Callable[[float], Awaitable[None]]
    """Let `seconds` pass on the ledger's clock."""


@pytest.fixture(params=TWINS)
async def harness(request: pytest.FixtureRequest) -> AsyncIterator[Harness]:
    if request.param == "memory":
        clock = FakeClock()

        async def advance(seconds: float) -> None:
            clock.now += seconds

        yield Harness(MemoryOffsetLedger(clock), advance)
        return

    async def wait(seconds: float) -> None:
        await asyncio.sleep(seconds)  # Redis expires keys on its own clock

    async with deployment_client(deployment_url(request, request.param)) as client:
        yield Harness(RedisOffsetLedger(client), wait)


async def claim(ledger: OffsetLedger, owner: str, **spans: tuple[int, int]) -> list[LedgerState]:
    """Claim P0 (``p0=(first, last)``) and/or P1 for `owner`; the states in that order."""
    wanted = {tp: Span(*spans[name]) for name, tp in (("p0", P0), ("p1", P1)) if name in spans}
    states = await ledger.claim(GROUP, wanted, owner, LEASE)
    return [states[tp] for tp in wanted]


async def test_a_fresh_partition_is_claimed_with_nothing_finished(harness: Harness) -> None:
    (state,) = await claim(harness.ledger, "a", p0=(0, 9))

    assert not state.held
    assert state.base == -1
    assert not any(state.done(offset) for offset in range(10))


async def test_what_was_recorded_is_done_below_the_base_and_above_it_where_finished(
    harness: Harness,
) -> None:
    ledger = harness.ledger
    await claim(ledger, "a", p0=(0, 9))
    # Key ordering: 0-3 finished in order, then 6 and 8 out of order.
    written = await ledger.record(GROUP, {P0: Progress(4, [6, 8])}, "a", LEASE, 60)
    assert written == {P0: True}

    (state,) = await claim(ledger, "a", p0=(0, 9))
    assert [o for o in range(10) if state.done(o)] == [0, 1, 2, 3, 6, 8]


async def test_finished_offsets_fall_away_as_the_base_passes_them(harness: Harness) -> None:
    ledger = harness.ledger
    await claim(ledger, "a", p0=(0, 9))
    await ledger.record(GROUP, {P0: Progress(2, [5, 7])}, "a", LEASE, 60)
    await ledger.record(GROUP, {P0: Progress(6, [])}, "a", LEASE, 60)
    await ledger.record(GROUP, {P0: Progress(3, [9])}, "a", LEASE, 60)  # a base never goes back

    (state,) = await claim(ledger, "a", p0=(0, 20))
    assert state.base == 6
    assert state.finished == frozenset({7, 9})


async def test_a_claim_reports_only_the_finished_offsets_of_its_span(harness: Harness) -> None:
    ledger = harness.ledger
    await claim(ledger, "a", p0=(0, 0))
    await ledger.record(GROUP, {P0: Progress(0, [3, 40, 41])}, "a", LEASE, 60)

    (state,) = await claim(ledger, "a", p0=(35, 45))
    assert state.finished == frozenset({40, 41})
    assert state.done(3) is False  # not asked about: the claim says nothing of it


async def test_gaps_in_offsets_need_nothing_recorded(harness: Harness) -> None:
    # A compacted topic: the records at 0, 1, 5 and 9 remain; the consumer finishes them and
    # its commit position moves to 10. Whatever is delivered again below it is done.
    ledger = harness.ledger
    await claim(ledger, "a", p0=(0, 9))
    await ledger.record(GROUP, {P0: Progress(10, [0, 1, 5, 9])}, "a", LEASE, 60)

    (state,) = await claim(ledger, "a", p0=(0, 12))
    assert [o for o in (0, 1, 5, 9, 10) if state.done(o)] == [0, 1, 5, 9]
    assert state.finished == frozenset()


async def test_a_held_partition_is_refused_to_others_until_released(harness: Harness) -> None:
    ledger = harness.ledger
    await claim(ledger, "a", p0=(0, 9))
    await ledger.record(GROUP, {P0: Progress(5, [])}, "a", LEASE, 60)

    held, free = await claim(ledger, "b", p0=(5, 9), p1=(0, 9))
    assert held.held
    assert 0 < held.held_for <= LEASE + 1e-9
    assert not held.done(0)  # a held partition tells nothing
    assert not free.held  # the other partition is b's now

    await ledger.release(GROUP, [P0], "b")  # not b's to release: nothing happens
    assert (await claim(ledger, "b", p0=(5, 9)))[0].held
    await ledger.release(GROUP, [P0], "a")
    (state,) = await claim(ledger, "b", p0=(5, 9))
    assert not state.held
    assert state.base == 5


async def test_a_write_renews_the_lease_and_an_empty_one_only_renews(harness: Harness) -> None:
    ledger = harness.ledger
    await claim(ledger, "a", p0=(0, 9))
    for _ in range(3):
        await harness.expire(LEASE / 2)
        assert await ledger.record(GROUP, {P0: Progress()}, "a", LEASE, 60) == {P0: True}

    assert (await claim(ledger, "b", p0=(0, 9)))[0].held  # 1.5 leases on, still a's


async def test_a_lapsed_lease_goes_to_the_next_owner_and_refuses_the_old_one(
    harness: Harness,
) -> None:
    ledger = harness.ledger
    await claim(ledger, "a", p0=(0, 9))
    await ledger.record(GROUP, {P0: Progress(3, [])}, "a", LEASE, 60)
    await harness.expire(LEASE * 1.5)  # a stalls past its lease

    (state,) = await claim(ledger, "b", p0=(3, 9))
    assert not state.held
    assert state.base == 3
    assert await ledger.record(GROUP, {P0: Progress(9, [])}, "a", LEASE, 60) == {P0: False}
    assert (await claim(ledger, "b", p0=(3, 9)))[0].base == 3  # a's write changed nothing


async def test_a_lapsed_lease_nobody_took_is_taken_back_by_its_writer(harness: Harness) -> None:
    # A writer held back past its lease (a slow store) still owns what it ran; with no one else
    # holding the partition, its write lands and takes the lease again.
    ledger = harness.ledger
    await claim(ledger, "a", p0=(0, 9))
    await harness.expire(LEASE * 1.5)

    assert await ledger.record(GROUP, {P0: Progress(4, [])}, "a", LEASE, 60) == {P0: True}
    assert (await claim(ledger, "b", p0=(0, 9)))[0].held


async def test_a_ledger_is_forgotten_after_its_retention(harness: Harness) -> None:
    ledger = harness.ledger
    await claim(ledger, "a", p0=(0, 9))
    await ledger.record(GROUP, {P0: Progress(5, [7])}, "a", LEASE, retention=2 * LEASE)
    await harness.expire(LEASE)
    assert (await claim(ledger, "a", p0=(0, 9)))[0].base == 5  # a claim does not renew it...

    await harness.expire(LEASE * 1.5)
    (state,) = await claim(ledger, "a", p0=(0, 9))
    assert state.base == -1  # ...and it is gone
    assert state.finished == frozenset()


async def test_groups_have_separate_ledgers(harness: Harness) -> None:
    ledger = harness.ledger
    await claim(ledger, "a", p0=(0, 9))
    await ledger.record(GROUP, {P0: Progress(5, [])}, "a", LEASE, 60)

    states = await ledger.claim("audit", {P0: Span(0, 9)}, "b", LEASE)
    assert not states[P0].held
    assert states[P0].base == -1


@pytest.mark.redis
@pytest.mark.parametrize("deployment", ["redis", "cluster"])
async def test_effects_land_with_the_finish_or_not_at_all(
    request: pytest.FixtureRequest, deployment: str
) -> None:
    async with deployment_client(deployment_url(request, deployment)) as client:
        ledger = RedisIdempotencyStore(client).ledger
        await ledger.claim(GROUP, {P0: Span(0, 9)}, "a", 30)

        effects = ledger.transaction()
        effects.incr("{billing}:orders")
        assert await ledger.record_with(GROUP, P0, 4, "a", 30, 60, effects) is True
        (state,) = (await ledger.claim(GROUP, {P0: Span(0, 9)}, "a", 30)).values()
        assert state.finished == frozenset({4})
        assert await client.get("{billing}:orders") == b"1"

        taken = ledger.transaction()
        taken.incr("{billing}:orders")
        assert await ledger.record_with(GROUP, P0, 5, "b", 30, 60, taken) is False
        assert await client.get("{billing}:orders") == b"1"  # b does not hold the partition

        if deployment == "cluster":
            stray = ledger.transaction()
            stray.incr("orders-without-the-tag")
            with pytest.raises(ConfigurationError, match=r"'\{billing\}…'"):
                await ledger.record_with(GROUP, P0, 6, "a", 30, 60, stray)
            assert not (await ledger.claim(GROUP, {P0: Span(6, 6)}, "a", 30))[P0].done(6)


@pytest.mark.redis
async def test_the_idempotency_stores_carry_their_ledger(redis: Redis) -> None:
    assert isinstance(MemoryIdempotencyStore().ledger, MemoryOffsetLedger)
    assert isinstance(RedisIdempotencyStore(redis).ledger, RedisOffsetLedger)
