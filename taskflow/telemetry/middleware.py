"""The telemetry middleware: spans and per-attempt metrics around consumers and periodic tasks.

Per consumed message, one `process {topic}` span of kind CONSUMER, parented on the producer's
context from the message's W3C `traceparent` header; per batch (a batch consumer), one
`process {topic}` span with a Link to each record's producer context instead of a parent; per
periodic run, one `run {task}` span of kind INTERNAL. What the error policy does after a failed
attempt is the policy's own decision (`taskflow.policy`), recorded as a span event. With telemetry
off (`telemetry_enabled`), `telemetry_layer` returns None, no layer is added and a handler stack
keeps its fast path (`taskflow.handler.ignores_ctx`). See docs/observability.md for every
attribute and metric.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, cast

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import attach, detach
from opentelemetry.trace import Link, SpanKind

from taskflow.batch import Batch
from taskflow.exceptions import Defer
from taskflow.middleware import Middleware
from taskflow.policy import DEFER, RETRY, SKIP, SKIP_TOMBSTONE, Decision, ErrorPolicy
from taskflow.specs import ConsumerSpec
from taskflow.telemetry.metrics import (
    MESSAGING_CONSUMED,
    MESSAGING_PROCESS_DURATION,
    PERIODIC_DURATION,
    PERIODIC_LATENESS,
    PERIODIC_RUNS,
    create,
)
from taskflow.telemetry.providers import SCOPE, telemetry_enabled
from taskflow.telemetry.tracing import GETTER, add_text, error_type, fail, message_id

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter, Histogram, Meter
    from opentelemetry.trace import Span, Tracer

    from taskflow.context import Context, Tick
    from taskflow.handler import Handler, Job
    from taskflow.message import Message
    from taskflow.middleware.builtin import Resources
    from taskflow.specs import MiddlewareFactory, ScheduleSpec

__all__ = ["ConsumerTelemetry", "PeriodicTelemetry", "telemetry_layer"]


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


class ConsumerTelemetry:
    """A `process {topic}` span and the messaging metrics around each attempt at a message.

    Args:
        next: The next handler.
        tracer: Where spans go.
        meter: Where the metrics go.
        spec: The consumer's registration: its group, and its error policy, whose decision
            after a failed attempt the span records.
    """

    def __init__(self, next: Handler, *, tracer: Tracer, meter: Meter, spec: ConsumerSpec) -> None:
        self.next = next
        self.tracer = tracer
        self.group = spec.group
        self.policy = ErrorPolicy.of(spec)
        self.duration: Histogram = create(meter, MESSAGING_PROCESS_DURATION)
        self.consumed: Counter = create(meter, MESSAGING_CONSUMED)
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
        if isinstance(job, Batch):
            await self._batch(job, ctx)
            return
        message = cast("Message", job)
        attempt = ctx.attempt
        metric_attributes = self._attributes.get(
            (message.topic, message.partition)
        ) or self._partition_attributes(message.topic, message.partition)
        delivered = attempt == 1  # a retry is not a new delivery, nor a deferred run
        parent = propagate.extract(message.headers, getter=GETTER)
        span = self.tracer.start_span(
            f"process {message.topic}",
            context=parent,
            kind=SpanKind.CONSUMER,
            attributes=self._span_attributes(message, metric_attributes, attempt),
        )
        token = attach(trace.set_span_in_context(span, parent))
        started = time.perf_counter()
        try:
            await self.next(job, ctx)
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
            if decision == SKIP_TOMBSTONE:  # not a failure either: the handler takes no None
                span.add_event("taskflow.skip_tombstone")
                raise
            kind = error_type(exc)
            metric_attributes = {**metric_attributes, "error.type": kind}
            fail(span, exc, kind)
            self._record_decision(span, decision, attempt)
            raise
        finally:
            self.duration.record(time.perf_counter() - started, metric_attributes)
            if delivered:
                self.consumed.add(1, metric_attributes)
            detach(token)
            span.end()

    async def _batch(self, batch: Batch, ctx: Context) -> None:
        """One span for the batch, linked to each record's producer context; the metrics count
        its records."""
        attempt = ctx.attempt
        first = batch.messages[0]
        partitions = batch.partitions
        metric_attributes = dict(self._partition_attributes(first.topic, first.partition))
        if len(partitions) > 1:
            del metric_attributes["messaging.destination.partition.id"]
        if len({tp.topic for tp in partitions}) > 1:
            del metric_attributes["messaging.destination.name"]
        span = self.tracer.start_span(
            f"process {first.topic}"
            if "messaging.destination.name" in metric_attributes
            else "process",
            kind=SpanKind.CONSUMER,
            links=_links(batch),
            attributes={
                **metric_attributes,
                "messaging.operation.type": "process",
                "messaging.batch.message_count": len(batch),
                "taskflow.attempt": attempt,
            },
        )
        delivered = attempt == 1
        token = attach(trace.set_span_in_context(span))
        started = time.perf_counter()
        try:
            await self.next(batch, ctx)
        except BaseException as exc:
            decision = self.policy.after_failure(exc, attempt)
            if decision == DEFER:
                delivered = False
                signal = cast("Defer", exc)
                span.add_event(
                    "taskflow.defer",
                    {"taskflow.reason": signal.reason, "taskflow.delay": signal.delay},
                )
                raise
            kind = error_type(exc)
            metric_attributes = {**metric_attributes, "error.type": kind}
            fail(span, exc, kind)
            self._record_decision(span, decision, attempt)
            raise
        finally:
            self.duration.record(time.perf_counter() - started, metric_attributes)
            if delivered:
                self.consumed.add(len(batch), metric_attributes)
            detach(token)
            span.end()

    def _span_attributes(
        self, message: Message, metric_attributes: dict[str, Any], attempt: int
    ) -> dict[str, Any]:
        attributes = {
            **metric_attributes,
            "messaging.operation.type": "process",
            "messaging.kafka.offset": message.offset,
            "messaging.message.id": message_id(message),
            "messaging.message.body.size": 0 if message.value is None else len(message.value),
            "taskflow.attempt": attempt,
        }
        add_text(attributes, "messaging.kafka.message.key", message.key)
        return attributes

    def _record_decision(self, span: Span, decision: Decision, attempt: int) -> None:
        """Say in the span what the error policy decided: the Processor acts on the same call.

        A retry is a span of its own; a cancellation (`raise`) gets no event.
        """
        if decision == RETRY:
            span.add_event("taskflow.retry", {"taskflow.attempt": attempt})
        elif decision.action == "retry_topic":
            span.add_event(
                "taskflow.retry",
                {"taskflow.attempt": attempt, "taskflow.retry.stage": decision.stage or 0},
            )
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


def _links(batch: Batch) -> list[Link]:
    """A Link to the producer context of each record that carries one."""
    links = []
    for message in batch.messages:
        if not message.headers:
            continue
        context = trace.get_current_span(
            propagate.extract(message.headers, getter=GETTER)
        ).get_span_context()
        if context.is_valid:
            links.append(Link(context, {"messaging.kafka.offset": message.offset}))
    return links


class PeriodicTelemetry:
    """A `run {task}` span and the periodic-task metrics around each run.

    Args:
        next: The next handler.
        tracer: Where spans go.
        meter: Where the metrics go.
    """

    def __init__(self, next: Handler, *, tracer: Tracer, meter: Meter) -> None:
        self.next = next
        self.tracer = tracer
        self.runs: Counter = create(meter, PERIODIC_RUNS)
        self.duration: Histogram = create(meter, PERIODIC_DURATION)
        self.lateness: Histogram = create(meter, PERIODIC_LATENESS)

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
                await self.next(job, ctx)
            except BaseException as exc:
                kind = error_type(exc)
                cancelled = isinstance(exc, asyncio.CancelledError)
                outcome["taskflow.periodic.outcome"] = "cancelled" if cancelled else "failure"
                outcome["error.type"] = kind
                fail(span, exc, kind)
                raise
            finally:
                self.duration.record(time.perf_counter() - started, outcome)
                self.runs.add(1, outcome)
