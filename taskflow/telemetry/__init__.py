"""Telemetry: every span, metric and status figure taskflow makes, in one package.

- `providers`: which OpenTelemetry providers are in effect, and whether telemetry is on.
- `tracing`: the `send {topic}` span of `App.publish` and the trace context messages carry.
- `metrics`: every instrument's name, kind, unit and description, in one place.
- `middleware`: the telemetry middleware, a `process {topic}` or `run {task}` span per attempt.
- `status`: what the built-in workers' `status()` returns (`taskflow.WorkerStatus` subclasses).
- `instruments`: the observable instruments, read from the workers' `status()` on collection.
- `setup`: the OpenTelemetry SDK set up from the ``OTEL_*`` variables, for `taskflow run`.
"""

from __future__ import annotations

from taskflow.telemetry.providers import SCOPE, meter_provider, telemetry_enabled
from taskflow.telemetry.setup import configure_from_env
from taskflow.telemetry.tracing import error_type, publish_tracer, traced_publish

__all__ = [
    "SCOPE",
    "configure_from_env",
    "error_type",
    "meter_provider",
    "publish_tracer",
    "telemetry_enabled",
    "traced_publish",
]
