"""OpenTelemetry traces and metrics for consumers and periodic tasks, as one built-in middleware.

Telemetry is on for an app when a real OpenTelemetry provider is configured when it starts: an
SDK (or any other implementation's) `TracerProvider` or `MeterProvider`, passed to
`App(tracer_provider=..., meter_provider=...)` or set globally. The API's own defaults (the proxy
and no-op providers) mean "not set up": then `telemetry_layer` returns None, no layer is added and
a handler stack keeps its fast path (`taskflow.handler.ignores_ctx`).

Per consumed message, one `process {topic}` span of kind CONSUMER, parented on the producer's
context from the message's W3C `traceparent` header; per periodic run, one `run {task}` span of
kind INTERNAL. See docs/observability.md for every attribute and metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any, Final, cast

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import attach, detach
from opentelemetry.metrics._internal import _ProxyMeterProvider
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode

from taskflow.exceptions import Defer, Reject
from taskflow.middleware import Middleware
from taskflow.specs import ConsumerSpec

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram, Meter
    from opentelemetry.trace import Span, Tracer

    from taskflow.context import Context, Tick
    from taskflow.handler import Handler, Job
    from taskflow.message import Headers, Message
    from taskflow.middleware.builtin import Resources
    from taskflow.specs import MiddlewareFactory, ScheduleSpec

__all__ = [
    "ConsumerTelemetry",
    "PeriodicTelemetry",
    "telemetry_enabled",
    "telemetry_layer",
    "with_trace_context",
]

SCOPE: Final = "taskflow"
MESSAGE_ID_HEADER: Final = "message-id"
"""A header whose UTF-8 value, when present, is the span's `messaging.message.id`."""

# The messaging semantic conventions' advice for messaging.process.duration.
PROCESS_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
# Periodic jobs run for longer than a message handler, and may start late by more than a tick.
PERIODIC_BUCKETS: Final = (*PROCESS_BUCKETS, 30, 60, 120, 300, 600, 1800, 3600)
LATENESS_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)

_NO_PROVIDER = (
    trace.ProxyTracerProvider,
    trace.NoOpTracerProvider,
    _ProxyMeterProvider,
    metrics.NoOpMeterProvider,
)


def telemetry_enabled(resources: Resources) -> bool:
    """True when a real tracer or meter provider is configured, on the App or globally."""
    providers = (
        resources.tracer_provider or trace.get_tracer_provider(),
        resources.meter_provider or metrics.get_meter_provider(),
    )
    return any(not isinstance(provider, _NO_PROVIDER) for provider in providers)


def telemetry_layer(
    spec: ConsumerSpec | ScheduleSpec, resources: Resources
) -> MiddlewareFactory | None:
    """The telemetry middleware for one registration, or None when telemetry is off.

    Telemetry is on when `telemetry_enabled(resources)`; then both providers in effect are used
    (the App's, else the global one), so configuring only one of them gives the other's no-op.
    """
    if not telemetry_enabled(resources):
        return None
    tracer = (resources.tracer_provider or trace.get_tracer_provider()).get_tracer(SCOPE)
    meter = (resources.meter_provider or metrics.get_meter_provider()).get_meter(SCOPE)
    if isinstance(spec, ConsumerSpec):
        return Middleware(ConsumerTelemetry, tracer=tracer, meter=meter, spec=spec)
    return Middleware(PeriodicTelemetry, tracer=tracer, meter=meter)


def with_trace_context(headers: Headers) -> Headers:
    """`headers` plus the current trace context (W3C `traceparent`, `tracestate`, baggage).

    Unchanged when no span is active or the headers already carry a `traceparent`.
    """
    if not trace.get_current_span().get_span_context().is_valid:
        return headers
    if any(name == "traceparent" for name, _ in headers):
        return headers
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return headers + tuple((name, value.encode("utf-8")) for name, value in carrier.items())


class _HeaderGetter(Getter["Headers"]):
    """Reads W3C trace headers from Kafka headers (name, bytes) pairs."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        values = [value.decode("utf-8", "replace") for name, value in carrier if name == key]
        return values or None

    def keys(self, carrier: Headers) -> list[str]:
        return [name for name, _ in carrier]


_GETTER: Final = _HeaderGetter()


def error_type(exc: BaseException) -> str:
    """The `error.type` of an exception: its class, qualified unless it is a builtin."""
    kind = type(exc)
    if kind is asyncio.CancelledError:
        return "asyncio.CancelledError"
    if kind.__module__ == "builtins":
        return kind.__qualname__
    return f"{kind.__module__}.{kind.__qualname__}"


def _fail(span: Span, exc: BaseException, kind: str) -> None:
    span.set_attribute("error.type", kind)
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


class ConsumerTelemetry:
    """A `process {topic}` span and the messaging metrics around each attempt at a message.

    Args:
        app: The next handler.
        tracer: Where spans go.
        meter: Where the metrics go.
        spec: The consumer's registration: its group and error policy, to say in the span what
            happens after a failed attempt.
    """

    def __init__(self, app: Handler, *, tracer: Tracer, meter: Meter, spec: ConsumerSpec) -> None:
        self.app = app
        self.tracer = tracer
        self.group = spec.group
        self.reject_on: tuple[type[BaseException], ...] = (Reject, *spec.reject_on)
        self.dead_letter = spec.dead_letter
        self.max_attempts = spec.max_attempts or 1
        self.duration: Histogram = meter.create_histogram(
            "messaging.process.duration",
            unit="s",
            description="Duration of processing operation.",
            explicit_bucket_boundaries_advisory=PROCESS_BUCKETS,
        )
        self.consumed: Counter = meter.create_counter(
            "messaging.client.consumed.messages",
            unit="{message}",
            description="Number of messages that were delivered to the application.",
        )

    async def __call__(self, job: Job, ctx: Context) -> None:
        message = cast("Message", job)
        attempt = ctx.attempt
        metric_attributes: dict[str, Any] = {
            "messaging.system": "kafka",
            "messaging.operation.name": "process",
            "messaging.destination.name": message.topic,
            "messaging.consumer.group.name": self.group,
            "messaging.destination.partition.id": str(message.partition),
        }
        parent = propagate.extract(message.headers, getter=_GETTER)
        span = self.tracer.start_span(
            f"process {message.topic}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=self._span_attributes(message, metric_attributes, attempt),
        )
        token = attach(trace.set_span_in_context(span, parent))
        started = time.perf_counter()
        try:
            await self.app(job, ctx)
        except Defer as signal:
            # Not a failure: the message did not run and will run again (see Defer).
            span.add_event(
                "taskflow.defer", {"taskflow.reason": signal.reason, "taskflow.delay": signal.delay}
            )
            raise
        except BaseException as exc:
            kind = error_type(exc)
            metric_attributes["error.type"] = kind
            _fail(span, exc, kind)
            if isinstance(exc, Exception):
                self._after_failure(span, exc, attempt)
            raise
        finally:
            self.duration.record(time.perf_counter() - started, metric_attributes)
            if attempt == 1:  # a retry is not a new delivery
                self.consumed.add(1, metric_attributes)
            detach(token)
            span.end()

    def _span_attributes(
        self, message: Message, metric_attributes: dict[str, Any], attempt: int
    ) -> dict[str, Any]:
        attributes = {
            **metric_attributes,
            "messaging.operation.type": "process",
            "messaging.kafka.offset": message.offset,
            "messaging.message.id": _message_id(message),
            "messaging.message.body.size": len(message.value),
            "taskflow.attempt": attempt,
        }
        if message.key is not None:
            with contextlib.suppress(UnicodeDecodeError):  # a binary key is left out
                attributes["messaging.kafka.message.key"] = message.key.decode("utf-8")
        return attributes

    def _after_failure(self, span: Span, exc: Exception, attempt: int) -> None:
        """Say in the span what the error policy (`workers/processing.py`) does next.

        It mirrors that policy: a rejection is dead-lettered or skipped, an attempt at the limit
        is dead-lettered, anything else is retried (the next attempt is a span of its own).
        """
        if isinstance(exc, self.reject_on):
            if self.dead_letter:
                span.add_event("taskflow.dead_letter", _dead_letter(self.dead_letter, "rejected"))
            else:
                span.add_event("taskflow.reject")
            return
        if self.dead_letter and attempt >= self.max_attempts:
            span.add_event("taskflow.dead_letter", _dead_letter(self.dead_letter, "exhausted"))
            return
        span.add_event("taskflow.retry", {"taskflow.attempt": attempt})


class PeriodicTelemetry:
    """A `run {task}` span and the periodic-task metrics around each run.

    Args:
        app: The next handler.
        tracer: Where spans go.
        meter: Where the metrics go.
    """

    def __init__(self, app: Handler, *, tracer: Tracer, meter: Meter) -> None:
        self.app = app
        self.tracer = tracer
        self.runs: Counter = meter.create_counter(
            "taskflow.periodic.runs", unit="{run}", description="Runs of periodic tasks."
        )
        self.duration: Histogram = meter.create_histogram(
            "taskflow.periodic.duration",
            unit="s",
            description="Duration of periodic task runs.",
            explicit_bucket_boundaries_advisory=PERIODIC_BUCKETS,
        )
        self.lateness: Histogram = meter.create_histogram(
            "taskflow.periodic.lateness",
            unit="s",
            description="Start of a periodic run minus its scheduled time (jitter included).",
            explicit_bucket_boundaries_advisory=LATENESS_BUCKETS,
        )

    async def __call__(self, job: Job, ctx: Context) -> None:
        tick = cast("Tick", job)
        task = {"taskflow.periodic.task": tick.task}
        late = (ctx.app.clock.now() - tick.scheduled_at).total_seconds()
        self.lateness.record(late, task)
        outcome: dict[str, Any] = {**task, "taskflow.periodic.outcome": "success"}
        started = time.perf_counter()
        with self.tracer.start_as_current_span(
            f"run {tick.task}",
            kind=SpanKind.INTERNAL,
            attributes={
                **task,
                "taskflow.periodic.scheduled_at": tick.scheduled_at.isoformat(),
                "taskflow.periodic.lateness": late,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                await self.app(job, ctx)
            except BaseException as exc:
                kind = error_type(exc)
                cancelled = isinstance(exc, asyncio.CancelledError)
                outcome["taskflow.periodic.outcome"] = "cancelled" if cancelled else "failure"
                outcome["error.type"] = kind
                _fail(span, exc, kind)
                raise
            finally:
                self.duration.record(time.perf_counter() - started, outcome)
                self.runs.add(1, outcome)


def _message_id(message: Message) -> str:
    header = message.header(MESSAGE_ID_HEADER) if message.headers else None
    if header is not None:
        try:
            return header.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return f"{message.topic}-{message.partition}-{message.offset}"


def _dead_letter(topic: str, reason: str) -> dict[str, str]:
    return {"taskflow.dead_letter.topic": topic, "taskflow.dead_letter.reason": reason}
