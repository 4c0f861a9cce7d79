"""Holding a lease: owner tokens, and renewing every third of the lease while work goes on.

Everything taskflow holds for a while (an idempotency claim, a periodic task's no-overlap lease)
is a key holding an owner token with an expiry. The holder renews it every third of its length;
a renewal the store refuses means the lease was lost (it ran out and may be someone else's now).
A renewal the store fails to answer is tried again, and counts as lost only after `patience`
seconds without a renewal: the scheduler gives up after a whole lease (another replica may hold it
by then), idempotency never does (its handler is never stopped half-way; the done mark decides).

Renewal loops are stopped by an `asyncio.Event` and awaited, never cancelled: redis-py can swallow
a cancellation that lands during a command (redis/redis-py#2028), which would leave a loop running.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

from taskflow.exceptions import StoreError

if TYPE_CHECKING:
    from taskflow.clock import Clock

__all__ = ["REPLICA", "LeaseLost", "hold", "keep", "new_owner"]

T = TypeVar("T")

REPLICA = f"{socket.gethostname()}:{os.getpid()}"
"""This process as the fleet's records name it: ``host:pid``."""

_TAG = uuid.uuid4().hex[:8]  # tells apart two processes that reuse a host name and pid
_owners = itertools.count()


def new_owner() -> str:
    """A fresh owner token, unique across replicas and restarts: ``host:pid:tag:n``."""
    return f"{REPLICA}:{_TAG}:{next(_owners)}"


async def keep(
    renew: Callable[[], Awaitable[bool]],
    length: float,
    stop: asyncio.Event,
    *,
    patience: float | None,
    on_error: Callable[[StoreError], object],
    clock: Clock | None = None,
    first: float | None = None,
) -> bool:
    """Renew a lease of `length` seconds every third of it until `stop` is set.

    Args:
        renew: Extends the lease; False when it was lost, `StoreError` when the store failed.
        length: The lease, in seconds.
        stop: Set when the work is over; the loop then returns at once (or after a renewal on
            its way to the store).
        patience: Seconds without a renewal after which a failing store counts as a lost
            lease; None: a failing store never does.
        on_error: Told of each failed renewal that is tried again.
        clock: Where to wait (a driven clock in tests); default the event loop's timer.
        first: Seconds before the first renewal; default a third of the lease.

    Returns:
        True when stopped, False when the lease was lost.
    """
    interval = length / 3
    renewed = _now(clock)
    wait = interval if first is None else first
    while True:
        if await _pause(stop, wait, clock):
            return True
        wait = interval
        try:
            kept = await renew()
        except StoreError as exc:
            if patience is None or _now(clock) - renewed < patience:
                on_error(exc)
                continue
            kept = False
        if not kept:
            return False
        renewed = _now(clock)


class LeaseLost(Exception):
    """The lease was lost while its work ran, so the work was cancelled."""


async def hold(
    work: Awaitable[T],
    renew: Callable[[], Awaitable[bool]],
    length: float,
    *,
    patience: float | None,
    on_error: Callable[[StoreError], object],
    on_lost: Callable[[], object],
    clock: Clock | None = None,
    name: str = "lease",
) -> T:
    """Await `work` here while a keeper task renews its lease (see `keep`).

    If the lease is lost, `on_lost` is called and `work` is cancelled: `LeaseLost` is raised once
    it has unwound. The keeper is stopped by an event when `work` ends, and awaited. A lease of
    infinite `length` never runs out: there is nothing to renew, and no keeper.
    """
    if math.isinf(length):
        return await work
    runner = asyncio.current_task()
    assert runner is not None, "hold runs in a task"
    stop = asyncio.Event()
    lost = False

    async def keeper() -> None:
        nonlocal lost
        kept = await keep(renew, length, stop, patience=patience, on_error=on_error, clock=clock)
        if not kept and not stop.is_set():  # else the work is over: nothing to cancel
            lost = True
            on_lost()
            runner.cancel()

    keeping = asyncio.create_task(keeper(), name=f"{name}:lease")
    try:
        return await work
    except asyncio.CancelledError:
        if lost and runner.uncancel() == 0:
            raise LeaseLost(name) from None
        raise
    finally:
        stop.set()
        await _unwound(keeping)


async def _unwound(task: asyncio.Task[None]) -> None:
    """Wait for `task` to end, even when this task is cancelled meanwhile (then re-raised)."""
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        raise


def _now(clock: Clock | None) -> float:
    return time.monotonic() if clock is None else clock.now().timestamp()


async def _pause(stop: asyncio.Event, seconds: float, clock: Clock | None) -> bool:
    """Wait `seconds`, or less if `stop` is set first; True when it is set."""
    if stop.is_set():
        return True
    if clock is None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await stop.wait()
        return stop.is_set()
    stopped = asyncio.ensure_future(stop.wait())
    slept = asyncio.ensure_future(clock.sleep_until(clock.now() + timedelta(seconds=seconds)))
    try:
        await asyncio.wait({stopped, slept}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in (stopped, slept):
            waiter.cancel()
        await asyncio.gather(stopped, slept, return_exceptions=True)
    return stop.is_set()
