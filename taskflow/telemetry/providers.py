"""Which OpenTelemetry providers are in effect, and whether they are real.

Telemetry is on for an app when a real provider is configured when it starts: an SDK (or any other
implementation's) `TracerProvider` or `MeterProvider`, passed to
`App(tracer_provider=..., meter_provider=...)` or set globally. The API's own defaults (its proxy
and no-op providers) mean "not set up". Only the public API is consulted: the no-op and proxy
tracer providers are public classes, the no-op meter provider too, and the API package's proxy
meter provider is the one `MeterProvider` the API module itself defines besides the no-op.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, cast

from opentelemetry import metrics, trace

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

    from taskflow.middleware.builtin import Resources

__all__ = [
    "SCOPE",
    "global_meter_is_set",
    "is_real",
    "meter_provider",
    "telemetry_enabled",
    "tracer_provider",
]

SCOPE: Final = "taskflow"
"""The instrumentation scope of every tracer and meter taskflow uses."""

_API_DEFAULTS: Final = (
    trace.ProxyTracerProvider,
    trace.NoOpTracerProvider,
    metrics.NoOpMeterProvider,
)
_API_PACKAGE: Final = metrics.__name__  # "opentelemetry.metrics": the API, which ships no SDK


def is_real(provider: object) -> bool:
    """True for a provider that records: not the API's proxy or no-op default."""
    if isinstance(provider, _API_DEFAULTS):
        return False
    return not type(provider).__module__.startswith(_API_PACKAGE)


def tracer_provider(configured: Any = None) -> TracerProvider | None:
    """The real tracer provider in effect (`configured`, else the global one), or None."""
    provider = configured or trace.get_tracer_provider()
    return cast("TracerProvider", provider) if is_real(provider) else None


def meter_provider(resources: Resources) -> MeterProvider | None:
    """The real meter provider in effect (the App's, else the global one), or None."""
    provider = resources.meter_provider or metrics.get_meter_provider()
    return cast("MeterProvider", provider) if is_real(provider) else None


def global_meter_is_set() -> bool:
    """True when a real MeterProvider was set globally."""
    return is_real(metrics.get_meter_provider())


def telemetry_enabled(resources: Resources) -> bool:
    """True when a real tracer or meter provider is configured, on the App or globally."""
    real_tracer = tracer_provider(resources.tracer_provider) is not None
    return real_tracer or meter_provider(resources) is not None
