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
from typing import TYPE_CHECKING, Any, Final

from aiolimiter import AsyncLimiter
from opentelemetry import metrics, trace

from taskflow.exceptions import Defer, StoreError
from taskflow.middleware.telemetry import SCOPE, telemetry_enabled
from taskflow.stores import keys
from taskflow.stores.health import StoreHealth

if TYPE_CHECKING:
    from opentelemetry.metrics import Histogram

    from taskflow.context import Context
    from taskflow.handler import Handler, Job
    from taskflow.middleware.builtin import Resources
    from taskflow.specs import ConsumerSpec, MiddlewareFactory
    from taskflow.stores.ratelimit import RateLimitStore

__all__ = [
    "GlobalRateLimit",
    "LocalRateLimit",
    "WaitTelemetry",
    "rate_limit_key",
    "rate_limit_layer",
]

logger = logging.getLogger("taskflow.ratelimit")

STORE_RETRY = 1.0
"""Seconds before a message deferred by a store outage is tried again."""

TOLERANCE = 0.01
"""Seconds a run may come early, so timer and network jitter do not drag the rate down."""

WAIT_EVENT: Final = "taskflow.rate_limit.wait"
WAIT_METRIC: Final = "taskflow.ratelimit.wait"
# From one interval of a fast limit (1 ms at 1000/s) to the hour of a "1/h" one.
WAIT_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
)  # fmt: skip

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
    report = WaitTelemetry.for_spec(spec, resources) if telemetry_enabled(resources) else None
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


class WaitTelemetry:
    """Reports a run's wait for its limit: a span event and a histogram recording.

    The event goes on the span that is current while the limiter runs: the telemetry
    middleware's `process {topic}` span, since that middleware is outermost.

    Args:
        histogram: The `taskflow.ratelimit.wait` histogram.
        worker: The consumer's worker name.
        scope: ``"local"`` or ``"global"``.
    """

    __slots__ = ("attributes", "histogram")

    def __init__(self, histogram: Histogram, *, worker: str, scope: str) -> None:
        self.histogram = histogram
        self.attributes = {"taskflow.worker": worker, "taskflow.rate_limit.scope": scope}

    @classmethod
    def for_spec(cls, spec: ConsumerSpec, resources: Resources) -> WaitTelemetry:
        """The reporter of one registration, on the meter provider in effect."""
        meter = (resources.meter_provider or metrics.get_meter_provider()).get_meter(SCOPE)
        histogram = meter.create_histogram(
            WAIT_METRIC,
            unit="s",
            description="Seconds a run waited for its rate limit; only runs that waited.",
            explicit_bucket_boundaries_advisory=WAIT_BUCKETS,
        )
        return cls(histogram, worker=spec.name, scope=spec.rate_limit_scope)

    def __call__(self, seconds: float) -> None:
        trace.get_current_span().add_event(
            WAIT_EVENT, {**self.attributes, "taskflow.rate_limit.waited": seconds}
        )
        self.histogram.record(seconds, self.attributes)


class LocalRateLimit:
    """Waits for the registration's in-process limiter before each run.

    Args:
        app: The next handler.
        limiter: The registration's limiter, shared by all its middleware.
        report: Called with the seconds waited by each run that had to wait (telemetry);
            None when telemetry is off.

    Attributes:
        waits: Runs that had to wait.
        waited_seconds: Total seconds those runs waited.
    """

    def __init__(
        self, app: Handler, *, limiter: AsyncLimiter, report: Report | None = None
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.report = report
        self.waits = 0
        self.waited_seconds = 0.0

    async def __call__(self, job: Job, ctx: Context) -> None:
        limiter = self.limiter
        if limiter.has_capacity():
            await limiter.acquire()
        else:
            started = time.monotonic()
            await unless_stopping(limiter.acquire(), ctx.stopping)
            self._waited(time.monotonic() - started)
        await self.app(job, ctx)

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
        app: The next handler.
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
        app: Handler,
        *,
        store: RateLimitStore,
        key: str,
        rate: float,
        name: str = "",
        report: Report | None = None,
    ) -> None:
        self.app = app
        self.store = store
        self.key = key
        self.name = name or key
        self.report = report
        self.interval = 1 / rate
        self.waits = 0
        self.waited_seconds = 0.0
        self.health = StoreHealth(logger)

    async def __call__(self, job: Job, ctx: Context) -> None:
        wait = await self._ask()
        if wait > 0:
            started = time.monotonic()
            while wait > 0:
                await unless_stopping(asyncio.sleep(wait), ctx.stopping)
                wait = await self._ask()
            self._waited(time.monotonic() - started)
        await self.app(job, ctx)

    def _waited(self, seconds: float) -> None:
        self.waits += 1
        self.waited_seconds += seconds
        if self.report is not None:
            self.report(seconds)

    async def _ask(self) -> float:
        """Book a run now (0.0), or the seconds to wait before asking again."""
        try:
            wait = await self.store.acquire(self.key, self.interval, TOLERANCE)
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
