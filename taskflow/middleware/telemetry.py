"""OpenTelemetry traces and metrics for consumers and periodic tasks, as one built-in middleware.

Telemetry is on for an app when a real OpenTelemetry provider is configured when it starts: an
SDK (or any other implementation's) `TracerProvider` or `MeterProvider`, passed to
`App(tracer_provider=..., meter_provider=...)` or set globally. The API's own defaults (the proxy
and no-op providers) mean "not set up": then `telemetry_layer` returns None, no layer is added and
a handler stack keeps its fast path (`taskflow.handler.ignores_ctx`).

Per consumed message, one `process {topic}` span of kind CONSUMER, parented on the producer's
context from the message's W3C `traceparent` header; per periodic run, one `run {task}` span of
kind INTERNAL; per `App.publish`, one `send {topic}` span of kind PRODUCER whose context the
message carries. What the error policy does after a failed attempt is the policy's own decision
(`taskflow.policy`), recorded as a span event. See docs/observability.md for every attribute and
metric; the metrics read from the workers' own counts are in `taskflow.workers.instruments`.
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

from taskflow.exceptions import Defer
from taskflow.middleware import Middleware
from taskflow.policy import DEFER, RETRY, SKIP, Decision, ErrorPolicy
from taskflow.specs import ConsumerSpec

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram, Meter, MeterProvider
    from opentelemetry.trace import Span, Tracer

    from taskflow.brokers.base import Broker
    from taskflow.context import Context, Tick
    from taskflow.handler import Handler, Job
    from taskflow.message import Headers, Message, TopicPartition
    from taskflow.middleware.builtin import Resources
    from taskflow.specs import MiddlewareFactory, ScheduleSpec

__all__ = [
    "ConsumerTelemetry",
    "PeriodicTelemetry",
    "error_type",
    "meter_provider",
    "publish_tracer",
    "telemetry_enabled",
    "telemetry_layer",
    "traced_publish",
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


def meter_provider(resources: Resources) -> MeterProvider | None:
    """The real meter provider in effect (the App's, else the global one), or None."""
    provider = resources.meter_provider or metrics.get_meter_provider()
    return None if isinstance(provider, _NO_PROVIDER) else cast("MeterProvider", provider)


def publish_tracer(tracer_provider: Any) -> Tracer | None:
    """The tracer of `send` spans: `tracer_provider`'s, else the global provider's.

    None when that provider is the API's proxy or no-op: then `App.publish` opens no span.
    """
    provider = tracer_provider or trace.get_tracer_provider()
    if isinstance(provider, _NO_PROVIDER):
        return None
    return cast("Tracer", provider.get_tracer(SCOPE))


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


async def traced_publish(
    tracer: Tracer, broker: Broker, topic: str, value: bytes, *, key: bytes | None, headers: Headers
) -> tuple[TopicPartition, int]:
    """Publish through `broker` inside a `send {topic}` span of kind PRODUCER.

    The span is a child of the current one (or starts a trace), and the message's headers carry
    its context, so the consumer's `process` span becomes its child; a `traceparent` the caller
    put in `headers` is kept.
    """
    with tracer.start_as_current_span(
        f"send {topic}",
        kind=SpanKind.PRODUCER,
        attributes=_send_attributes(topic, value, key, headers),
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            tp, offset = await broker.publish(
                topic, value, key=key, headers=with_trace_context(headers)
            )
        except BaseException as exc:
            _fail(span, exc, error_type(exc))
            raise
        span.set_attribute("messaging.destination.partition.id", str(tp.partition))
        span.set_attribute("messaging.kafka.offset", offset)
        return tp, offset


def _send_attributes(
    topic: str, value: bytes, key: bytes | None, headers: Headers
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": topic,
        "messaging.message.body.size": len(value),
    }
    _add_text(attributes, "messaging.kafka.message.key", key)
    for name, header in headers:
        if name == MESSAGE_ID_HEADER:
            _add_text(attributes, "messaging.message.id", header)
    return attributes


def _add_text(attributes: dict[str, Any], name: str, value: bytes | None) -> None:
    """Set `name` to `value` decoded, when it is UTF-8 text (binary values are left out)."""
    if value is not None:
        with contextlib.suppress(UnicodeDecodeError):
            attributes[name] = value.decode("utf-8")


def error_type(exc: BaseException | type[BaseException]) -> str:
    """The `error.type` of an exception (or its class): the class, qualified unless a builtin."""
    kind = exc if isinstance(exc, type) else type(exc)
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
        spec: The consumer's registration: its group, and its error policy, whose decision
            after a failed attempt the span records.
    """

    def __init__(self, app: Handler, *, tracer: Tracer, meter: Meter, spec: ConsumerSpec) -> None:
        self.app = app
        self.tracer = tracer
        self.group = spec.group
        self.policy = ErrorPolicy.of(spec)
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
        # The metric attributes of each partition, made once: they are the same for every
        # message of it, and this runs per message.
        self._attributes: dict[tuple[str, int], dict[str, Any]] = {}

    def _partition_attributes(self, topic: str, partition: int) -> dict[str, Any]:
        attributes = self._attributes[(topic, partition)] = {
            "messaging.system": "kafka",
            "messaging.operation.name": "process",
            "messaging.destination.name": topic,
            "messaging.consumer.group.name": self.group,
            "messaging.destination.partition.id": str(partition),
        }
        return attributes

    async def __call__(self, job: Job, ctx: Context) -> None:
        message = cast("Message", job)
        attempt = ctx.attempt
        metric_attributes = self._attributes.get(
            (message.topic, message.partition)
        ) or self._partition_attributes(message.topic, message.partition)
        delivered = attempt == 1  # a retry is not a new delivery, nor a deferred run
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
        except BaseException as exc:
            decision = self.policy.after_failure(exc, attempt)
            if decision == DEFER:  # not a failure: the message did not run and will run again
                delivered = False
                signal = cast("Defer", exc)
                span.add_event(
                    "taskflow.defer",
                    {"taskflow.reason": signal.reason, "taskflow.delay": signal.delay},
                )
                raise
            kind = error_type(exc)
            metric_attributes = {**metric_attributes, "error.type": kind}
            _fail(span, exc, kind)
            self._record_decision(span, decision, attempt)
            raise
        finally:
            self.duration.record(time.perf_counter() - started, metric_attributes)
            if delivered:
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
        _add_text(attributes, "messaging.kafka.message.key", message.key)
        return attributes

    def _record_decision(self, span: Span, decision: Decision, attempt: int) -> None:
        """Say in the span what the error policy decided: the Processor acts on the same call.

        A retry is a span of its own; a cancellation (`raise`) gets no event.
        """
        if decision == RETRY:
            span.add_event("taskflow.retry", {"taskflow.attempt": attempt})
        elif decision == SKIP:
            span.add_event("taskflow.reject")
        elif decision.action == "dead_letter":
            span.add_event(
                "taskflow.dead_letter",
                {
                    "taskflow.dead_letter.topic": self.policy.dead_letter or "",
                    "taskflow.dead_letter.reason": decision.reason or "",
                },
            )


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
