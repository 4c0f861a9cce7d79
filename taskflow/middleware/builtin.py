"""The built-in middleware a registration switches on, in their documented order.

From the outside in: app-wide middleware, then the built-ins below (telemetry, rate limit,
idempotency, timeout), then the registration's own middleware, then the handler. Built-ins get
what they need (the run's stores, providers) from `Resources`, never from the app or a worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from taskflow.exceptions import ConfigurationError
from taskflow.handler import threads_of
from taskflow.middleware import Middleware
from taskflow.specs import ConsumerSpec
from taskflow.stores.connect import Stores

if TYPE_CHECKING:
    from taskflow.middleware.timeout import Watchdog
    from taskflow.specs import MiddlewareFactory, ScheduleSpec

__all__ = ["Resources", "layers_for"]


@dataclass(frozen=True, slots=True)
class Resources:
    """What the built-in middleware and the workers may use, opened by the runner.

    Attributes:
        app_name: The app's name.
        stores: The run's stores (`taskflow.stores.connect.Stores`); by default the in-process
            ones, without idempotency.
        tracer_provider: The TracerProvider, or None for the global one.
        meter_provider: The MeterProvider, or None for the global one.
        watchdog: The handler calls running under a timeout.
    """

    app_name: str
    stores: Stores = field(default=None)  # type: ignore[assignment]  # set in __post_init__
    tracer_provider: Any = None
    meter_provider: Any = None
    watchdog: Watchdog | None = None

    def __post_init__(self) -> None:
        if self.stores is None:
            object.__setattr__(self, "stores", Stores.in_process(self.app_name))


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

        if spec.rate_limit_scope == "global" and resources.stores.rate_limits is None:
            raise ConfigurationError(
                f"{spec.name}: rate_limit_scope='global' shares the limit through Redis; "
                "configure one with App(redis_url=...), --redis or TASKFLOW_REDIS_URL"
            )
        layers.append(rate_limit_layer(spec, resources))
    if spec.idempotent:  # innermost: a claim is held only while the handler itself runs
        from taskflow.middleware.idempotency import idempotency_layer

        if resources.stores.idempotency is None:
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
