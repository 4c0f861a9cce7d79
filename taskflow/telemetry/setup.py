"""Setting up the OpenTelemetry SDK from the standard ``OTEL_*`` variables, for `taskflow run`.

Opt-in: nothing happens unless ``OTEL_TRACES_EXPORTER`` or ``OTEL_METRICS_EXPORTER`` is set (and
``OTEL_SDK_DISABLED`` is not true). Each takes a comma-separated list of ``console``, ``otlp`` or
``none``; ``otlp`` needs the ``opentelemetry-exporter-otlp`` package and follows its own
``OTEL_EXPORTER_OTLP_*`` variables (``OTEL_EXPORTER_OTLP_PROTOCOL`` picks ``grpc`` or
``http/protobuf``). The resource comes from ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``,
with the app name as the default service name. The providers are installed globally, where the
telemetry middleware finds them.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping
from typing import Any

from taskflow.exceptions import ConfigurationError

__all__ = ["configure_from_env"]

_OTLP_HINT = "pip install opentelemetry-exporter-otlp"


def configure_from_env(
    service_name: str, environ: Mapping[str, str] | None = None
) -> Callable[[], None] | None:
    """Install SDK providers as the ``OTEL_*`` variables ask; return their shutdown, or None.

    Raises:
        ConfigurationError: for an unknown exporter, or ``otlp`` without its package.
    """
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    traces = _names(env, "OTEL_TRACES_EXPORTER")
    metrics = _names(env, "OTEL_METRICS_EXPORTER")
    if not traces and not metrics:
        return None
    from opentelemetry import metrics as metrics_api
    from opentelemetry import trace as trace_api
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # OTEL_RESOURCE_ATTRIBUTES is read by Resource.create; OTEL_SERVICE_NAME beats the app name.
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or service_name})
    protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    shutdowns: list[Callable[[], Any]] = []
    if traces:
        tracer_provider = TracerProvider(resource=resource)
        for name in traces:
            exporter = _span_exporter(name, protocol)
            tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        trace_api.set_tracer_provider(tracer_provider)
        shutdowns.append(tracer_provider.shutdown)
    if metrics:
        readers = [PeriodicExportingMetricReader(_metric_exporter(n, protocol)) for n in metrics]
        meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        metrics_api.set_meter_provider(meter_provider)
        shutdowns.append(meter_provider.shutdown)

    def shutdown() -> None:
        for stop in shutdowns:
            stop()

    return shutdown


def _names(env: Mapping[str, str], variable: str) -> list[str]:
    raw = env.get(variable, "")
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    for name in names:
        if name not in ("console", "otlp", "none"):
            raise ConfigurationError(f"{variable}={raw!r}: exporters are console, otlp or none")
    return [n for n in names if n != "none"]


def _span_exporter(name: str, protocol: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    return _otlp("trace_exporter", "OTLPSpanExporter", protocol)


def _metric_exporter(name: str, protocol: str) -> Any:
    if name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()
    return _otlp("metric_exporter", "OTLPMetricExporter", protocol)


def _otlp(module: str, cls: str, protocol: str) -> Any:
    transport = {"grpc": "grpc", "http/protobuf": "http"}.get(protocol)
    if transport is None:
        raise ConfigurationError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: taskflow supports grpc and http/protobuf"
        )
    path = f"opentelemetry.exporter.otlp.proto.{transport}.{module}"
    try:
        return getattr(importlib.import_module(path), cls)()
    except ImportError:
        raise ConfigurationError(f"the otlp exporter is not installed: {_OTLP_HINT}") from None
