"""Rate limiting: at most `rate_limit` handler runs, per process or shared by every replica.

Both scopes are smooth: runs are spaced one *emission interval* (1/rate) apart, with a small
tolerance of `TOLERANCE` seconds so that a timer firing a millisecond late does not slow the
long-run rate down. After idle the limit does not refill into a burst: no run goes more than
`TOLERANCE` ahead of evenly spaced runs, so the first second after a pause runs at most
`rate * (1 s + TOLERANCE) + 1` handlers, never twice the rate.

- ``local``: one `aiolimiter.AsyncLimiter` per registration, shared by its partitions' lanes.
- ``global``: GCRA (the generic cell rate algorithm) in the run's `RateLimitStore`
  (`taskflow.stores.ratelimit`): on Redis, one Lua script that reads Redis server time, so every
  replica shares the limit whatever its own clock says. It keeps one number, the theoretical
  arrival time, at ``taskflow:{app:consumer}:ratelimit``, and answers how long to wait; the
  middleware sleeps that long and asks again.

A batch (`taskflow.batch.Batch`) counts as its number of records: a batch of 500 takes the limit
of 500 runs (locally it waits for them before it runs; globally it books them, and the next run
waits until they have passed), so a batch consumer handles at most `rate` records per second.

A lane waiting here does not take its next record, so its partition's buffer fills up to
`max_buffered` and the consumer pauses it while it keeps polling: the backpressure.

With telemetry on (`telemetry_enabled`), a run that had to wait adds a `taskflow.rate_limit.wait`
event to the current span (the telemetry middleware's, which is outermost) and records the wait in
the `taskflow.ratelimit.wait` histogram. With telemetry off nothing is built for it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from aiolimiter import AsyncLimiter

from taskflow.batch import Batch
from taskflow.exceptions import Defer, StoreError
from taskflow.stores import keys
from taskflow.stores.health import StoreHealth
from taskflow.telemetry.metrics import rate_limit_wait

if TYPE_CHECKING:
    from taskflow.context import Context
    from taskflow.handler import Handler, Job
    from taskflow.middleware.builtin import Resources
    from taskflow.specs import ConsumerSpec, MiddlewareFactory
    from taskflow.stores.ratelimit import RateLimitStore

__all__ = [
    "GlobalRateLimit",
    "LocalRateLimit",
    "rate_limit_key",
    "rate_limit_layer",
]

logger = logging.getLogger("taskflow.ratelimit")

STORE_RETRY = 1.0
"""Seconds before a message deferred by a store outage is tried again."""

TOLERANCE = 0.01
"""Seconds a run may come early, so timer and network jitter do not drag the rate down."""

Report = Callable[[float], None]
"""Told the seconds a run waited for its limit, once the wait is over."""


async def unless_stopping(wait: Coroutine[Any, Any, Any], stopping: asyncio.Event) -> None:
    """Await `wait`, unless shutdown begins first: then raise `Defer`, leaving the message
    unfinished (not committed, delivered again) instead of holding up the drain."""
    waiter = asyncio.ensure_future(wait)
    stopper = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        if not waiter.done():
            waiter.cancel()
        await asyncio.gather(waiter, stopper, return_exceptions=True)
    if not waiter.done() or waiter.cancelled():
        raise Defer("shutting down while waiting for the rate limit")
    waiter.result()


def rate_limit_key(app_name: str, consumer: str) -> str:
    """The store key of a global limit: one per app and consumer, whatever the replica."""
    return keys.rate_limit(app_name, consumer)


def rate_limit_layer(spec: ConsumerSpec, resources: Resources) -> MiddlewareFactory:
    """The middleware factory for `spec.rate_limit`, in its scope.

    One limiter per call (or the run's rate-limit store), shared by every middleware it builds.
    """
    limit = spec.rate_limit
    assert limit is not None, "rate_limit_layer needs a spec with a rate_limit"
    rate = limit.per_second
    report = rate_limit_wait(spec, resources)
    if spec.rate_limit_scope == "global":
        store = resources.stores.rate_limits
        assert store is not None, "layers_for refuses a global limit without Redis"
        return functools.partial(
            GlobalRateLimit,
            store=store,
            key=rate_limit_key(resources.app_name, spec.name),
            rate=rate,
            name=spec.name,
            report=report,
        )
    return functools.partial(LocalRateLimit, limiter=smooth_limiter(rate), report=report)


def smooth_limiter(rate: float) -> AsyncLimiter:
    """An AsyncLimiter for `rate` per second that holds at most `TOLERANCE` seconds of credit.

    `AsyncLimiter(rate, 1)` would let a full second's worth through at once after idle (twice
    the rate over that second); a bucket of one run plus the tolerance does not.
    """
    capacity = 1 + TOLERANCE * rate
    return AsyncLimiter(capacity, capacity / rate)


class LocalRateLimit:
    """Waits for the registration's in-process limiter before each run.

    Args:
        next: The next handler.
        limiter: The registration's limiter, shared by all its middleware.
        report: Called with the seconds waited by each run that had to wait (telemetry);
            None when telemetry is off.

    Attributes:
        waits: Runs that had to wait.
        waited_seconds: Total seconds those runs waited.
    """

    def __init__(
        self, next: Handler, *, limiter: AsyncLimiter, report: Report | None = None
    ) -> None:
        self.next = next
        self.limiter = limiter
        self.report = report
        self.waits = 0
        self.waited_seconds = 0.0

    async def __call__(self, job: Job, ctx: Context) -> None:
        limiter = self.limiter
        if isinstance(job, Batch):
            await self._acquire_many(len(job), ctx)
        elif limiter.has_capacity():
            await limiter.acquire()
        else:
            started = time.monotonic()
            await unless_stopping(limiter.acquire(), ctx.stopping)
            self._waited(time.monotonic() - started)
        await self.next(job, ctx)

    async def _acquire_many(self, count: int, ctx: Context) -> None:
        """Take `count` runs' worth of the limit, a bucketful at a time."""
        limiter = self.limiter
        if limiter.has_capacity(count):
            await limiter.acquire(count)
            return
        started = time.monotonic()

        async def take_all() -> None:
            left = float(count)
            while left > 0:
                amount = min(left, limiter.max_rate)
                await limiter.acquire(amount)
                left -= amount

        await unless_stopping(take_all(), ctx.stopping)
        self._waited(time.monotonic() - started)

    def _waited(self, seconds: float) -> None:
        self.waits += 1
        self.waited_seconds += seconds
        if self.report is not None:
            self.report(seconds)


class GlobalRateLimit:
    """Asks the shared store (GCRA) before each run, and sleeps as long as it says.

    A store failure raises `Defer`: the run does not happen and is tried again after
    `STORE_RETRY` seconds, without counting as an attempt, so an outage never dead-letters.

    Args:
        next: The next handler.
        store: Where the limit lives (`taskflow.stores.ratelimit`).
        key: The limit's key (`rate_limit_key`).
        rate: Runs per second.
        name: The worker name, for log lines (default the key).
        report: Called with the seconds waited by each run that had to wait (telemetry);
            None when telemetry is off.

    Attributes:
        waits: Runs that had to wait.
        waited_seconds: Total seconds those runs waited.
    """

    def __init__(
        self,
        next: Handler,
        *,
        store: RateLimitStore,
        key: str,
        rate: float,
        name: str = "",
        report: Report | None = None,
    ) -> None:
        self.next = next
        self.store = store
        self.key = key
        self.name = name or key
        self.report = report
        self.interval = 1 / rate
        self.waits = 0
        self.waited_seconds = 0.0
        self.health = StoreHealth(logger)

    async def __call__(self, job: Job, ctx: Context) -> None:
        count = len(job) if isinstance(job, Batch) else 1
        wait = await self._ask(count)
        if wait > 0:
            started = time.monotonic()
            while wait > 0:
                await unless_stopping(asyncio.sleep(wait), ctx.stopping)
                wait = await self._ask(count)
            self._waited(time.monotonic() - started)
        await self.next(job, ctx)

    def _waited(self, seconds: float) -> None:
        self.waits += 1
        self.waited_seconds += seconds
        if self.report is not None:
            self.report(seconds)

    async def _ask(self, count: int = 1) -> float:
        """Book `count` runs now (0.0), or the seconds to wait before asking again."""
        try:
            wait = await self.store.acquire(self.key, self.interval * count, TOLERANCE)
        except StoreError as exc:
            self.health.failed(
                "%s: the shared rate limit at %s is unavailable (%s); "
                "messages are retried until Redis answers",
                self.name,
                self.key,
                exc,
            )
            raise Defer(f"shared rate limit {self.key} unavailable: {exc}", STORE_RETRY) from exc
        self.health.answered("%s: the shared rate limit at %s answers again", self.name, self.key)
        return wait
