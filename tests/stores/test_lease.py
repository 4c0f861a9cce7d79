"""Holding a lease: renewal every third of it, patience with a failing store, losing it."""

from __future__ import annotations

import asyncio

import pytest

from taskflow import StoreError
from taskflow.stores.lease import LeaseLost, hold, keep, new_owner

LEASE = 0.3


class Renewals:
    """A store's answers to renewals: True, False (lost), or "fail" (StoreError)."""

    def __init__(self, *answers: bool | str) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.errors: list[StoreError] = []
        self.exhausted = asyncio.Event()
        """Set once a renewal found no scripted answer left (and answered True)."""

    async def __call__(self) -> bool:
        self.calls += 1
        if not self.answers:
            self.exhausted.set()
        answer = self.answers.pop(0) if self.answers else True
        if answer == "fail":
            raise StoreError("down")
        return bool(answer)


def test_owner_tokens_are_unique_and_name_the_process() -> None:
    first, second = new_owner(), new_owner()
    assert first != second
    assert first.rsplit(":", 2)[0] == second.rsplit(":", 2)[0]  # host:pid, same process


async def test_a_renewal_the_store_refuses_means_the_lease_is_lost() -> None:
    renew = Renewals(True, False)
    kept = await keep(renew, LEASE, asyncio.Event(), patience=LEASE, on_error=renew.errors.append)
    assert kept is False
    assert renew.calls == 2


async def test_without_patience_a_failing_store_never_loses_the_lease() -> None:
    renew, stop = Renewals(*["fail"] * 6), asyncio.Event()
    keeper = asyncio.create_task(
        keep(renew, LEASE, stop, patience=None, on_error=renew.errors.append, first=0)
    )
    async with asyncio.timeout(10):
        await renew.exhausted.wait()  # six failures, then an answer
    stop.set()
    assert await keeper is True
    assert len(renew.errors) == 6


async def test_with_patience_a_store_failing_for_a_whole_lease_loses_it() -> None:
    renew = Renewals(*["fail"] * 10)
    kept = await keep(renew, LEASE, asyncio.Event(), patience=LEASE, on_error=renew.errors.append)
    assert kept is False
    assert 2 <= len(renew.errors) <= 3  # tried again within the lease, then gave up


async def test_work_that_ends_stops_the_keeper_without_cancelling_it() -> None:
    renew = Renewals()
    tasks_before = len(asyncio.all_tasks())

    async def work() -> str:
        await asyncio.sleep(LEASE)  # long enough for two renewals
        return "done"

    result = await hold(
        work(), renew, LEASE, patience=LEASE, on_error=renew.errors.append, on_lost=lambda: None
    )
    assert result == "done"
    assert renew.calls >= 2
    assert len(asyncio.all_tasks()) == tasks_before  # the keeper has ended


async def test_work_whose_lease_is_lost_is_cancelled_and_says_so() -> None:
    lost: list[bool] = []
    cancelled = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(LeaseLost):
        await hold(
            work(),
            Renewals(False),
            LEASE,
            patience=LEASE,
            on_error=lambda exc: None,
            on_lost=lambda: lost.append(True),
        )
    assert lost == [True]
    assert cancelled.is_set()


async def test_a_lease_that_never_runs_out_is_not_renewed() -> None:
    renew = Renewals()

    async def work() -> int:
        await asyncio.sleep(0.05)
        return 1

    assert await hold(work(), renew, float("inf"), patience=None, on_error=print, on_lost=print)
    assert renew.calls == 0
