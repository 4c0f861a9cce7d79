"""The built-in middleware a registration switches on, in their documented order.

From the outside in: app-wide middleware, then the built-ins below (telemetry, rate limit,
idempotency, timeout), then the registration's own middleware, then the handler. Built-ins get
what they need (a Redis client, providers) from `Resources`, never from the app or a worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from taskflow.exceptions import ConfigurationError
from taskflow.handler import threads_of
from taskflow.middleware import Middleware
from taskflow.specs import ConsumerSpec

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from taskflow.middleware.timeout import Watchdog
    from taskflow.specs import MiddlewareFactory, ScheduleSpec

__all__ = ["Resources", "layers_for"]


@dataclass(frozen=True, slots=True)
class Resources:
    """What the built-in middleware may use, opened by the runner."""

    app_name: str
    redis: Redis | None = None
    tracer_provider: Any = None
    meter_provider: Any = None
    watchdog: Watchdog | None = None


def layers_for(spec: ConsumerSpec | ScheduleSpec, resources: Resources) -> list[MiddlewareFactory]:
    """The built-in middleware for one registration, outermost first.

    Raises:
        ConfigurationError: when a switched-on feature needs a resource that is not configured.
    """
    layers: list[MiddlewareFactory] = []
    from taskflow.telemetry.middleware import telemetry_layer

    telemetry = telemetry_layer(spec, resources)
    if telemetry is not None:  # outermost: its span covers every other built-in
        layers.append(telemetry)
    if isinstance(spec, ConsumerSpec) and spec.rate_limit is not None:
        from taskflow.middleware.ratelimit import rate_limit_layer

        if spec.rate_limit_scope == "global" and resources.redis is None:
            raise ConfigurationError(
                f"{spec.name}: rate_limit_scope='global' shares the limit through Redis; "
                "configure one with App(redis_url=...), --redis or TASKFLOW_REDIS_URL"
            )
        layers.append(rate_limit_layer(spec, resources))
    if spec.idempotent:  # innermost: a claim is held only while the handler itself runs
        from taskflow.middleware.idempotency import idempotency_layer

        if spec.idempotency_store is None and resources.redis is None:
            raise ConfigurationError(
                f"{spec.name}: idempotent=True keeps its claims in Redis; configure one with "
                "App(redis_url=...), --redis or TASKFLOW_REDIS_URL, or pass "
                "App(idempotency_store=MemoryIdempotencyStore()) for tests and single-process dev"
            )
        layers.append(idempotency_layer(spec, resources))
    if spec.timeout is not None:
        # Innermost: it times the handler (and the registration's middleware), not the waits.
        from taskflow.middleware.timeout import Timeout

        threads = threads_of(spec.handler)
        if threads is not None:
            threads.stuck_limit = spec.concurrency if isinstance(spec, ConsumerSpec) else 1
        layers.append(
            Middleware(
                Timeout,
                seconds=spec.timeout,
                watchdog=resources.watchdog,
                worker=spec.name,
                threads=threads,
            )
        )
    return layers
