"""The OpenTelemetry set-up of the tracing contenders: SDK providers that export nowhere.

An SDK `TracerProvider` with a `BatchSpanProcessor` (default settings) exporting to `DropSpans`,
and an SDK `MeterProvider` whose `PeriodicExportingMetricReader` exports every minute to
`DropMetrics`: the SDK does all its work (span creation, attribute cleaning, aggregation) except
the export's I/O. Also the attributes taskflow's consumer span and metrics carry, for the raw loops.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

__all__ = [
    "GETTER",
    "METRICS",
    "TRACING",
    "DropMetrics",
    "DropSpans",
    "meter_provider",
    "metric_attributes",
    "span_attributes",
    "tracer_provider",
]

TRACING = (
    "opentelemetry-sdk TracerProvider + BatchSpanProcessor (default settings) exporting to "
    "DropSpans, a SpanExporter that drops every span"
)
METRICS = (
    "opentelemetry-sdk MeterProvider + PeriodicExportingMetricReader (every 60 s) exporting to "
    "DropMetrics, a MetricExporter that drops every batch"
)


class DropSpans(SpanExporter):
    """An exporter that drops every span: the SDK does all its work up to the export's I/O."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


class DropMetrics(MetricExporter):
    """An exporter that drops every batch of metrics: aggregation happens, export I/O does not."""

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        pass


def tracer_provider() -> TracerProvider:
    """An SDK provider as an app would set one up, but exporting nowhere (see `TRACING`)."""
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(DropSpans()))
    return provider


def meter_provider() -> MeterProvider:
    """An SDK provider as an app would set one up, but exporting nowhere (see `METRICS`)."""
    reader = PeriodicExportingMetricReader(DropMetrics(), export_interval_millis=60_000)
    return MeterProvider(metric_readers=[reader])


class HeaderGetter(Getter[list[tuple[str, bytes]]]):
    """W3C trace context from a record's (name, bytes) headers."""

    def get(self, carrier: list[tuple[str, bytes]], key: str) -> list[str] | None:
        values = [value.decode("utf-8", "replace") for name, value in carrier if name == key]
        return values or None

    def keys(self, carrier: list[tuple[str, bytes]]) -> list[str]:
        return [name for name, _ in carrier]


GETTER = HeaderGetter()


def metric_attributes(record: Any, group: str) -> dict[str, Any]:
    """The attributes of taskflow's per-message metrics, for an aiokafka record."""
    return {
        "messaging.system": "kafka",
        "messaging.operation.name": "process",
        "messaging.destination.name": record.topic,
        "messaging.consumer.group.name": group,
        "messaging.destination.partition.id": str(record.partition),
    }


def span_attributes(record: Any, group: str) -> dict[str, Any]:
    """The attributes taskflow's consumer span carries, for an aiokafka record."""
    attributes: dict[str, Any] = {
        **metric_attributes(record, group),
        "messaging.operation.type": "process",
        "messaging.kafka.offset": record.offset,
        "messaging.message.id": f"{record.topic}-{record.partition}-{record.offset}",
        "messaging.message.body.size": len(record.value),
        "taskflow.attempt": 1,
    }
    if record.key is not None:
        attributes["messaging.kafka.message.key"] = record.key.decode()
    return attributes
