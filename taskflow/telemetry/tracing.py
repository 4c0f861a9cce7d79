"""Spans: the `send {topic}` span of `App.publish`, and what every taskflow span shares.

Per `App.publish`, one `send {topic}` span of kind PRODUCER whose context the message carries (W3C
`traceparent`, `tracestate`, baggage), so the consumer's `process {topic}` span (made by
`taskflow.telemetry.middleware`) becomes its child. With `wait=False` the span still ends when the
broker answers (or when the record is given up on), not when the call returns: its duration, its
partition and offset, and its error say what became of the record.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode

from taskflow.telemetry.providers import SCOPE, tracer_provider

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from taskflow.brokers.base import Broker, Delivery
    from taskflow.message import Headers, Message, TopicPartition

__all__ = [
    "GETTER",
    "MESSAGE_ID_HEADER",
    "add_text",
    "error_type",
    "fail",
    "message_id",
    "publish_tracer",
    "traced_enqueue",
    "traced_publish",
    "with_trace_context",
]

MESSAGE_ID_HEADER: Final = "message-id"
"""A header whose UTF-8 value, when present, is the span's `messaging.message.id`."""


def publish_tracer(configured: Any) -> Tracer | None:
    """The tracer of `send` spans: `configured`'s, else the global provider's.

    None when that provider is the API's proxy or no-op: then `App.publish` opens no span.
    """
    provider = tracer_provider(configured)
    return None if provider is None else provider.get_tracer(SCOPE)


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


GETTER: Final = _HeaderGetter()


async def traced_publish(
    tracer: Tracer,
    broker: Broker,
    topic: str,
    value: bytes | None,
    *,
    key: bytes | None,
    headers: Headers,
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
            fail(span, exc, error_type(exc))
            raise
        span.set_attribute("messaging.destination.partition.id", str(tp.partition))
        span.set_attribute("messaging.kafka.offset", offset)
        return tp, offset


async def traced_enqueue(
    tracer: Tracer,
    broker: Broker,
    topic: str,
    value: bytes | None,
    *,
    key: bytes | None,
    headers: Headers,
) -> Delivery:
    """Queue through `broker` under a `send {topic}` span that ends when the broker answers.

    The span is started as for `traced_publish` and is current while the record is queued; it
    ends with the delivery (its partition and offset, or its error), or at once when the record
    cannot be queued.
    """
    span = tracer.start_span(
        f"send {topic}",
        kind=SpanKind.PRODUCER,
        attributes=_send_attributes(topic, value, key, headers),
        record_exception=False,
        set_status_on_exception=False,
    )
    try:
        with trace.use_span(span, end_on_exit=False):
            delivery = await broker.enqueue(
                topic, value, key=key, headers=with_trace_context(headers)
            )
    except BaseException as exc:
        fail(span, exc, error_type(exc))
        span.end()
        raise
    delivery.add_done_callback(lambda done: _end_send(span, done))
    return delivery


def _end_send(span: Span, delivery: Delivery) -> None:
    if delivery.cancelled():
        span.set_attribute("error.type", "taskflow.undelivered")
        span.set_status(Status(StatusCode.ERROR, "not delivered before the broker closed"))
    elif (exc := delivery.exception()) is not None:
        fail(span, exc, error_type(exc))
    else:
        tp, offset = delivery.result()
        span.set_attribute("messaging.destination.partition.id", str(tp.partition))
        span.set_attribute("messaging.kafka.offset", offset)
    span.end()


def _send_attributes(
    topic: str, value: bytes | None, key: bytes | None, headers: Headers
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": "kafka",
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": topic,
        "messaging.message.body.size": 0 if value is None else len(value),
    }
    add_text(attributes, "messaging.kafka.message.key", key)
    for name, header in headers:
        if name == MESSAGE_ID_HEADER:
            add_text(attributes, "messaging.message.id", header)
    return attributes


def add_text(attributes: dict[str, Any], name: str, value: bytes | None) -> None:
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


def fail(span: Span, exc: BaseException, kind: str) -> None:
    span.set_attribute("error.type", kind)
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def message_id(message: Message) -> str:
    header = message.header(MESSAGE_ID_HEADER) if message.headers else None
    if header is not None:
        try:
            return header.decode("utf-8")
        except UnicodeDecodeError:
            pass
    return f"{message.topic}-{message.partition}-{message.offset}"
