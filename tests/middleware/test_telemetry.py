"""OpenTelemetry: spans and metrics as the SDK's in-memory exporter and reader see them."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, Metric
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from taskflow import App, Backoff, Context, Defer, Message, Middleware, PublishError, Reject, Tick
from taskflow.handler import ignores_ctx
from taskflow.middleware.builtin import Resources, layers_for
from taskflow.telemetry import instruments
from taskflow.telemetry.metrics import PROCESS_BUCKETS
from taskflow.telemetry.providers import meter_provider
from taskflow.telemetry.tracing import with_trace_context
from taskflow.testing import ManualClock, TestClient
from taskflow.workers import ConsumerWorker, ScheduledWorker

FAST = Backoff(initial=0.001, maximum=0.001, jitter=0)
TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PARENT_ID = 0x00F067AA0BA902B7
TRACEPARENT = f"00-{TRACE_ID:032x}-{PARENT_ID:016x}-01"


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    reader: InMemoryMetricReader
    tracer_provider: TracerProvider
    meter_provider: MeterProvider

    def app(self, name: str = "billing", **options: Any) -> App:
        return App(
            name,
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
            **options,
        )

    def finished(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans.get_finished_spans() if span.name == name]

    def metrics(self) -> dict[str, Metric]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return {
            metric.name: metric
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            if scope.scope.name == "taskflow"
            for metric in scope.metrics
        }


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Telemetry(exporter, reader, tracer_provider, meter_provider)
    tracer_provider.shutdown()
    meter_provider.shutdown()


# -- consumer spans -------------------------------------------------------------------------


async def test_each_message_gets_a_consumer_span_with_the_messaging_conventions(
    otel: Telemetry,
) -> None:
    app = otel.app()

    @app.consume("orders")
    async def on_order(order: dict[str, int]) -> None:
        pass

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 1}, key="customer-7")
        await client.drain()

    (span,) = otel.finished("process orders")
    assert span.kind is SpanKind.CONSUMER
    assert span.parent is None  # no traceparent header: a trace of its own
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": "orders",
        "messaging.consumer.group.name": "billing",
        "messaging.destination.partition.id": "0",
        "messaging.kafka.offset": 0,
        "messaging.kafka.message.key": "customer-7",
        "messaging.message.id": "orders-0-0",
        "messaging.message.body.size": len(b'{"id":1}'),
        "taskflow.attempt": 1,
    }
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "taskflow"


async def test_a_binary_key_is_left_out_and_a_message_id_header_is_the_message_id(
    otel: Telemetry,
) -> None:
    app = otel.app()

    @app.consume("orders")
    async def on_order(message: Message) -> None:
        pass

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", b"x", key=b"\xff\xfe", headers={"message-id": "order-42"})
        await client.drain()

    (span,) = otel.finished("process orders")
    attributes = dict(span.attributes or {})
    assert "messaging.kafka.message.key" not in attributes
    assert attributes["messaging.message.id"] == "order-42"


async def test_the_span_is_parented_on_the_producers_traceparent_header(otel: Telemetry) -> None:
    app = otel.app()
    seen: list[trace.SpanContext] = []

    @app.consume("orders")
    async def on_order(message: Message) -> None:
        seen.append(trace.get_current_span().get_span_context())

    async with TestClient(app) as client:
        await client.publish("orders", b"{}", headers={"traceparent": TRACEPARENT})
        await client.drain()

    (span,) = otel.finished("process orders")
    assert span.parent is not None
    assert span.parent.is_remote
    assert (span.parent.trace_id, span.parent.span_id) == (TRACE_ID, PARENT_ID)
    assert span.context is not None
    assert span.context.trace_id == TRACE_ID
    assert seen == [span.context]  # the handler runs inside the span


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


async def test_publishing_from_a_handler_goes_through_a_producer_span_to_the_next_consumer(
    otel: Telemetry,
) -> None:
    app = otel.app()
    tracer = otel.tracer_provider.get_tracer("test")

    @app.consume("orders")
    async def on_order(order: dict[str, int], ctx: Context) -> None:
        await ctx.publish("invoices", order)
        with tracer.start_as_current_span("shipping"):
            await ctx.app.publish("receipts", order)

    @app.consume("invoices", "receipts", name="downstream", group="accounting")
    async def downstream(message: Message) -> None:
        pass

    async with TestClient(app) as client:
        await client.publish("orders", {"id": 1}, headers={"traceparent": TRACEPARENT})
        await client.drain()

    (order,) = otel.finished("process orders")
    (send_invoice,) = otel.finished("send invoices")
    (invoice,) = otel.finished("process invoices")
    (shipping,) = otel.finished("shipping")
    (send_receipt,) = otel.finished("send receipts")
    (receipt,) = otel.finished("process receipts")
    # process orders → send invoices → process invoices
    assert parent_of(send_invoice) == span_id(order)
    assert parent_of(invoice) == span_id(send_invoice)
    # process orders → shipping → send receipts → process receipts
    assert parent_of(shipping) == span_id(order)
    assert parent_of(send_receipt) == span_id(shipping)
    assert parent_of(receipt) == span_id(send_receipt)
    traces = {s.context.trace_id for s in (send_invoice, invoice, send_receipt, receipt)}  # type: ignore[union-attr]
    assert traces == {TRACE_ID}
    assert dict(invoice.attributes or {})["messaging.consumer.group.name"] == "accounting"


async def test_a_producer_span_follows_the_messaging_conventions(otel: Telemetry) -> None:
    app = otel.app()

    @app.consume("invoices")
    async def on_invoice(message: Message) -> None:
        pass

    async with TestClient(app, partitions=1) as client:
        await client.publish("invoices", b"first")  # offset 0, from outside the app
        await app.publish("invoices", {"id": 7}, key="customer-7", headers={"message-id": "i-7"})
        await client.drain()

    (send,) = otel.finished("send invoices")
    assert send.kind is SpanKind.PRODUCER
    assert send.parent is None  # published outside any span: a trace of its own
    assert send.status.status_code is StatusCode.UNSET
    assert dict(send.attributes or {}) == {
        "messaging.system": "kafka",
        "messaging.operation.name": "send",
        "messaging.operation.type": "send",
        "messaging.destination.name": "invoices",
        "messaging.destination.partition.id": "0",
        "messaging.kafka.offset": 1,
        "messaging.kafka.message.key": "customer-7",
        "messaging.message.id": "i-7",
        "messaging.message.body.size": len(b'{"id":7}'),
    }
    assert send.instrumentation_scope is not None
    assert send.instrumentation_scope.name == "taskflow"
    first, second = sorted(otel.finished("process invoices"), key=lambda s: s.start_time or 0)
    assert first.parent is None  # no traceparent header
    assert parent_of(second) == span_id(send)
    assert second.context is not None
    assert second.context.trace_id == send.context.trace_id  # type: ignore[union-attr]


async def test_a_traceparent_the_caller_set_is_kept(otel: Telemetry) -> None:
    app = otel.app()
    seen: list[bytes | None] = []

    @app.consume("invoices")
    async def on_invoice(message: Message) -> None:
        seen.append(message.header("traceparent"))

    async with TestClient(app) as client:
        await app.publish("invoices", b"x", headers={"traceparent": TRACEPARENT})
        await client.drain()

    assert seen == [TRACEPARENT.encode()]
    (send,) = otel.finished("send invoices")
    (process,) = otel.finished("process invoices")
    assert (process.parent.trace_id, process.parent.span_id) == (TRACE_ID, PARENT_ID)  # type: ignore[union-attr]
    assert send.context is not None
    assert send.context.trace_id != TRACE_ID


async def test_a_failed_publish_is_an_error_producer_span(
    otel: Telemetry, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = otel.app()

    async with TestClient(app) as client:

        async def refuse(topic: str, value: bytes, **options: Any) -> None:
            raise PublishError("the broker refused it")

        monkeypatch.setattr(client.broker, "publish", refuse)
        with pytest.raises(PublishError, match="refused"):
            await app.publish("invoices", b"x")

    (send,) = otel.finished("send invoices")
    assert send.status.status_code is StatusCode.ERROR
    assert send.status.description == "PublishError: the broker refused it"
    attributes = dict(send.attributes or {})
    assert attributes["error.type"] == "taskflow.exceptions.PublishError"
    assert "messaging.destination.partition.id" not in attributes  # never acknowledged
    assert [e.name for e in send.events] == ["exception"]


async def test_without_an_sdk_publish_opens_no_span_but_carries_the_current_one(
    otel: Telemetry,
) -> None:
    app = App("billing")  # no providers, and none set globally
    seen: list[bytes | None] = []
    tracer = otel.tracer_provider.get_tracer("test")

    @app.consume("invoices")
    async def on_invoice(message: Message) -> None:
        seen.append(message.header("traceparent"))

    async with TestClient(app, partitions=1) as client:
        await app.publish("invoices", b"outside")
        with tracer.start_as_current_span("caller") as caller:
            await app.publish("invoices", b"inside")
        await client.drain()

    context = caller.get_span_context()
    traceparent = f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
    assert seen == [None, traceparent.encode()]
    assert [s.name for s in otel.spans.get_finished_spans()] == ["caller"]


def test_publish_headers_get_the_trace_context_only_inside_a_span(otel: Telemetry) -> None:
    tracer = otel.tracer_provider.get_tracer("test")
    assert with_trace_context((("a", b"1"),)) == (("a", b"1"),)
    with tracer.start_as_current_span("send") as span:
        headers = dict(with_trace_context((("a", b"1"),)))
        own = (("traceparent", TRACEPARENT.encode()),)
        assert with_trace_context(own) == own  # a traceparent the caller set is kept
    context = span.get_span_context()
    assert headers["a"] == b"1"
    assert (
        headers["traceparent"]
        == f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}".encode()
    )


async def test_a_failing_attempt_is_an_error_span_and_says_what_happens_next(
    otel: Telemetry,
) -> None:
    app = otel.app()

    @app.consume("orders", retry=FAST, dead_letter="orders.DLQ", max_attempts=2)
    async def on_order(order: dict[str, int]) -> None:
        raise RuntimeError("database is down")

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 1})
        await client.drain()

    first, second = sorted(otel.finished("process orders"), key=lambda s: s.start_time or 0)
    for attempt, span in enumerate((first, second), start=1):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == "RuntimeError: database is down"
        attributes = dict(span.attributes or {})
        assert attributes["error.type"] == "RuntimeError"
        assert attributes["taskflow.attempt"] == attempt
    assert [e.name for e in first.events] == ["exception", "taskflow.retry"]
    assert [e.name for e in second.events] == ["exception", "taskflow.dead_letter"]
    assert dict(second.events[1].attributes or {}) == {
        "taskflow.dead_letter.topic": "orders.DLQ",
        "taskflow.dead_letter.reason": "exhausted",
    }


async def test_a_retry_that_succeeds_ends_with_an_ok_span(otel: Telemetry) -> None:
    app = otel.app()
    calls: list[int] = []

    @app.consume("orders", retry=FAST)
    async def on_order(order: dict[str, int]) -> None:
        calls.append(order["id"])
        if len(calls) == 1:
            raise RuntimeError("flaky")

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 1})
        await client.publish("orders", {"id": 2})
        await client.drain()

    spans = sorted(otel.finished("process orders"), key=lambda s: s.start_time or 0)
    attempts = [
        (
            dict(s.attributes or {})["messaging.kafka.offset"],
            dict(s.attributes or {})["taskflow.attempt"],
        )
        for s in spans
    ]
    assert attempts == [(0, 1), (0, 2), (1, 1)]
    assert [s.status.status_code for s in spans] == [
        StatusCode.ERROR,
        StatusCode.UNSET,
        StatusCode.UNSET,
    ]


async def test_rejects_and_undecodable_payloads_are_recorded_as_such(otel: Telemetry) -> None:
    app = otel.app()

    @app.consume("orders")
    async def on_order(order: dict[str, int]) -> None:
        raise Reject("unknown customer")

    @app.consume("payments", dead_letter="payments.DLQ")
    async def on_payment(payment: dict[str, int]) -> None:
        pass

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 1})
        await client.publish("payments", b"not json")
        await client.drain()

    (order,) = otel.finished("process orders")
    (payment,) = otel.finished("process payments")
    assert dict(order.attributes or {})["error.type"] == "taskflow.exceptions.Reject"
    assert [e.name for e in order.events] == ["exception", "taskflow.reject"]
    assert dict(payment.attributes or {})["error.type"] == "taskflow.exceptions.DecodeError"
    assert dict(payment.events[-1].attributes or {}) == {
        "taskflow.dead_letter.topic": "payments.DLQ",
        "taskflow.dead_letter.reason": "rejected",
    }


async def test_a_skipped_tombstone_is_counted_and_is_not_a_failure(otel: Telemetry) -> None:
    app = otel.app()

    @app.consume("orders", dead_letter="orders.DLQ")
    async def on_order(order: dict[str, int]) -> None: ...

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 1}, key="a")
        await client.publish("orders", None, key="a")
        await client.drain()
        metrics = otel.metrics()

    _handled, tombstone = otel.finished("process orders")
    attributes = dict(tombstone.attributes or {})
    assert tombstone.status.status_code is StatusCode.UNSET
    assert "error.type" not in attributes
    assert attributes["messaging.message.body.size"] == 0
    assert [e.name for e in tombstone.events] == ["taskflow.skip_tombstone"]
    assert values(metrics["taskflow.consumer.tombstones_skipped"]) == {of(**ORDERS): 1}
    assert "taskflow.consumer.dead_letters" not in metrics


# -- consumer metrics -----------------------------------------------------------------------


async def test_consumer_metrics_follow_the_messaging_conventions(otel: Telemetry) -> None:
    app = otel.app()

    @app.consume("orders", retry=FAST, dead_letter="orders.DLQ", max_attempts=2)
    async def on_order(order: dict[str, int]) -> None:
        if order["id"] == 2:
            raise ValueError("bad order")

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 1})
        await client.publish("orders", {"id": 2})
        await client.drain()

    metrics = otel.metrics()
    base = {
        "messaging.system": "kafka",
        "messaging.operation.name": "process",
        "messaging.destination.name": "orders",
        "messaging.consumer.group.name": "billing",
        "messaging.destination.partition.id": "0",
    }
    failed = {**base, "error.type": "ValueError"}

    duration = metrics["messaging.process.duration"]
    assert duration.unit == "s"
    points = {
        frozenset(p.attributes.items()): p  # type: ignore[union-attr]
        for p in duration.data.data_points
    }
    ok, bad = points[frozenset(base.items())], points[frozenset(failed.items())]
    assert isinstance(ok, HistogramDataPoint)
    assert isinstance(bad, HistogramDataPoint)
    assert tuple(ok.explicit_bounds) == PROCESS_BUCKETS
    assert (ok.count, bad.count) == (1, 2)  # two attempts at the failing message

    consumed = metrics["messaging.client.consumed.messages"]
    assert consumed.unit == "{message}"
    counts = {
        frozenset(p.attributes.items()): p.value  # type: ignore[union-attr]
        for p in consumed.data.data_points
    }
    assert counts == {frozenset(base.items()): 1, frozenset(failed.items()): 1}  # once each


async def test_a_deferred_message_is_consumed_once_when_it_finally_runs(otel: Telemetry) -> None:
    app = otel.app()
    runs: list[int] = []

    class NotYet:
        def __init__(self, next: Any) -> None:
            self.next = next
            self.deferrals = 0

        async def __call__(self, job: Any, ctx: Context) -> None:
            if self.deferrals < 2:
                self.deferrals += 1
                raise Defer("not now", 0.01)
            await self.next(job, ctx)

    @app.consume("orders", middleware=[Middleware(NotYet)])
    async def on_order(order: dict[str, int]) -> None:
        runs.append(order["id"])

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": 1})
        await client.drain()

    assert runs == [1]
    assert sum(values(otel.metrics()["messaging.client.consumed.messages"]).values()) == 1
    assert len(otel.finished("process orders")) == 3  # each call has its span


def values(metric: Metric) -> dict[frozenset[tuple[str, Any]], Any]:
    """A metric's data points, by their attribute set."""
    return {
        frozenset((p.attributes or {}).items()): p.value  # type: ignore[union-attr]
        for p in metric.data.data_points
    }


def of(**attributes: Any) -> frozenset[tuple[str, Any]]:
    return frozenset({k.replace("__", "."): v for k, v in attributes.items()}.items())


ORDERS = {"messaging.destination.name": "orders", "messaging.consumer.group.name": "billing"}


async def test_retries_dead_letters_and_rejects_are_counted_as_the_policy_decided(
    otel: Telemetry,
) -> None:
    app = otel.app()

    @app.consume("orders", retry=FAST, dead_letter="orders.DLQ", max_attempts=3)
    async def on_order(order: dict[str, str]) -> None:
        if order["fail"] == "crash":
            raise RuntimeError("database is down")
        if order["fail"] == "reject":
            raise Reject("unknown customer")

    @app.consume("payments", retry=FAST)
    async def on_payment(payment: dict[str, int]) -> None:
        raise Reject("duplicate payment")

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"fail": "crash"})  # three attempts, then dead-lettered
        await client.publish("orders", {"fail": "reject"})  # dead-lettered at once
        await client.publish("orders", b"not json")  # undecodable: dead-lettered at once
        await client.publish("orders", {"fail": ""})
        await client.publish("payments", {"id": 1})  # rejected, no dead-letter topic: skipped
        await client.drain()
        metrics = otel.metrics()  # read while the app runs: these come from its workers

    retries = metrics["taskflow.consumer.retries"]
    assert retries.unit == "{retry}"
    assert values(retries) == {of(**ORDERS, error__type="RuntimeError"): 2}
    dead_letters = metrics["taskflow.consumer.dead_letters"]
    assert dead_letters.unit == "{message}"
    reason = "taskflow.dead_letter.reason"
    assert values(dead_letters) == {
        of(**ORDERS, error__type="RuntimeError", **{reason: "exhausted"}): 1,
        of(**ORDERS, error__type="taskflow.exceptions.Reject", **{reason: "rejected"}): 1,
        of(**ORDERS, error__type="taskflow.exceptions.DecodeError", **{reason: "rejected"}): 1,
    }
    assert values(metrics["taskflow.consumer.rejected"]) == {
        of(
            messaging__destination__name="payments",
            messaging__consumer__group__name="billing",
            error__type="taskflow.exceptions.Reject",
        ): 1
    }
    # The spans say the same, from the same decision.
    events = [
        e.name for s in otel.finished("process orders") for e in s.events if e.name != "exception"
    ]
    assert sorted(events) == ["taskflow.dead_letter"] * 3 + ["taskflow.retry"] * 2


async def test_messages_sent_to_retry_topics_are_counted_per_stage(otel: Telemetry) -> None:
    clock = ManualClock()
    app = otel.app(clock=clock)

    @app.consume("orders", dead_letter="orders.DLQ", retry_topics=[10])
    async def on_order(order: dict[str, str]) -> None:
        raise RuntimeError("database is down")

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", {"id": "1"})
        await client.drain()
        await clock.advance(10)
        await client.drain()
        metrics = otel.metrics()

    assert values(metrics["taskflow.consumer.retries"]) == {
        of(**ORDERS, error__type="RuntimeError", taskflow__retry__stage=1): 1
    }
    # The last stage gives up: counted by the retry worker, on its topic and in its group.
    assert values(metrics["taskflow.consumer.dead_letters"]) == {
        of(
            messaging__destination__name="orders.retry.10s",
            messaging__consumer__group__name="billing.retry",
            error__type="RuntimeError",
            taskflow__dead_letter__reason="exhausted",
        ): 1
    }
    (first,) = otel.finished("process orders")
    (retry,) = [e for e in first.events if e.name == "taskflow.retry"]
    assert dict(retry.attributes or {}) == {"taskflow.attempt": 1, "taskflow.retry.stage": 1}
    (staged,) = otel.finished("process orders.retry.10s")
    assert (staged.attributes or {})["taskflow.attempt"] == 2
    assert [e.name for e in staged.events if e.name != "exception"] == ["taskflow.dead_letter"]


async def test_lag_and_in_flight_come_from_what_the_consumer_knows(otel: Telemetry) -> None:
    app = otel.app()
    release = asyncio.Event()
    started = asyncio.Event()

    @app.consume("orders")
    async def on_order(order: dict[str, int]) -> None:
        started.set()
        await release.wait()

    async with TestClient(app, partitions=2) as client:
        # bytes, so the records carry no header: the buffered bytes are values and keys
        sent = [await client.publish("orders", b'{"n": %d}' % n, key="same") for n in range(6)]
        (busy,) = {tp.partition for tp, _ in sent}  # one key, one partition
        await started.wait()
        metrics = otel.metrics()
        lag, in_flight = metrics["taskflow.consumer.lag"], metrics["taskflow.consumer.in_flight"]
        assert (lag.unit, in_flight.unit) == ("{message}", "{message}")
        partition = {**ORDERS, "messaging.destination.partition.id": str(busy)}
        idle = {**ORDERS, "messaging.destination.partition.id": str(1 - busy)}
        assert values(lag) == {of(**partition): 6, of(**idle): 0}  # the first is not finished
        assert values(in_flight) == {of(**partition): 6, of(**idle): 0}
        held = sum(
            len(m.value) + len(m.key or b"") for m in client.broker.topic("orders").logs[busy]
        )
        consumer = of(messaging__consumer__group__name="billing", taskflow__worker="on_order")
        buffered = metrics["taskflow.consumer.buffered_bytes"]
        assert (buffered.unit, values(buffered)) == ("By", {consumer: held})

        release.set()
        await client.drain()
        metrics = otel.metrics()
        assert values(metrics["taskflow.consumer.buffered_bytes"]) == {consumer: 0}
        assert values(metrics["taskflow.consumer.lag"]) == {of(**partition): 0, of(**idle): 0}
        assert values(metrics["taskflow.consumer.in_flight"]) == {
            of(**partition): 0,
            of(**idle): 0,
        }


async def test_the_instruments_read_only_the_running_workers(otel: Telemetry) -> None:
    app = otel.app()

    @app.consume("orders", retry=FAST)
    async def on_order(order: dict[str, int], ctx: Context) -> None:
        if ctx.attempt == 1:
            raise RuntimeError("flaky")

    for run in (1, 2):  # the same providers twice: the instruments are registered once
        async with TestClient(app, partitions=1) as client:
            await client.publish("orders", {"run": run})
            await client.drain()
            retries = values(otel.metrics()["taskflow.consumer.retries"])
            assert retries == {of(**ORDERS, error__type="RuntimeError"): 1}
    assert "taskflow.consumer.retries" not in otel.metrics()  # stopped: nothing to read


# -- periodic tasks -------------------------------------------------------------------------


async def test_skipped_periodic_runs_are_counted(otel: Telemetry) -> None:
    clock = ManualClock()
    app = otel.app(clock=clock)
    release = asyncio.Event()

    @app.every(seconds=1)
    async def slow() -> None:
        await release.wait()

    async with TestClient(app):
        await clock.advance(3)  # runs at 1; the ticks at 2 and 3 find it still running
        skipped = otel.metrics()["taskflow.periodic.skipped"]
        release.set()
    assert skipped.unit == "{run}"
    assert values(skipped) == {of(taskflow__periodic__task="slow"): 2}


async def test_a_periodic_run_gets_a_span_and_metrics(otel: Telemetry) -> None:
    clock = ManualClock()
    app = otel.app(clock=clock)

    @app.every(minutes=5)
    async def cleanup(ctx: Context) -> None:
        pass

    @app.every(minutes=5)
    async def broken() -> None:
        raise OSError("disk full")

    async with TestClient(app) as client:
        await client.run_schedule("cleanup")
        with pytest.raises(OSError, match="disk full"):
            await client.run_schedule("broken")
        (worker,) = (w for w in client.runtime.workers if w.name == "cleanup")
        assert isinstance(worker, ScheduledWorker)
        await worker.run_once(Tick("cleanup", clock.now() - timedelta(seconds=3)))

    first, late = sorted(otel.finished("run cleanup"), key=lambda s: s.start_time or 0)
    assert first.kind is SpanKind.INTERNAL
    assert dict(first.attributes or {}) == {
        "taskflow.periodic.task": "cleanup",
        "taskflow.periodic.scheduled_at": "2026-01-01T00:00:00+00:00",
        "taskflow.periodic.lateness": 0.0,
    }
    assert dict(late.attributes or {})["taskflow.periodic.lateness"] == 3.0
    (failed,) = otel.finished("run broken")
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {})["error.type"] == "OSError"

    metrics = otel.metrics()
    runs = {
        frozenset(p.attributes.items()): p.value  # type: ignore[union-attr]
        for p in metrics["taskflow.periodic.runs"].data.data_points
    }
    assert runs == {
        frozenset(
            {"taskflow.periodic.task": "cleanup", "taskflow.periodic.outcome": "success"}.items()
        ): 2,
        frozenset(
            {
                "taskflow.periodic.task": "broken",
                "taskflow.periodic.outcome": "failure",
                "error.type": "OSError",
            }.items()
        ): 1,
    }
    assert metrics["taskflow.periodic.duration"].unit == "s"
    lateness = metrics["taskflow.periodic.lateness"]
    assert lateness.unit == "s"
    (point,) = (
        p
        for p in lateness.data.data_points
        if p.attributes == {"taskflow.periodic.task": "cleanup"}
    )
    assert isinstance(point, HistogramDataPoint)
    assert (point.count, point.sum, point.max) == (2, 3.0, 3.0)


# -- off unless set up ----------------------------------------------------------------------


async def test_without_an_sdk_no_layer_is_added_and_the_fast_path_stays() -> None:
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)  # nothing set globally
    app = App("billing")

    @app.consume("orders")
    async def on_order(order: dict[str, int]) -> None:
        pass

    @app.every(minutes=5)
    async def cleanup() -> None:
        pass

    assert layers_for(app.consumers[0], Resources(app.name)) == []
    assert layers_for(app.schedules[0], Resources(app.name)) == []
    async with TestClient(app) as client:
        (worker,) = (w for w in client.runtime.workers if isinstance(w, ConsumerWorker))
        assert ignores_ctx(worker.processor.handler)
        assert worker.processor.shared_ctx is not None


async def test_with_an_sdk_the_layer_is_outermost(otel: Telemetry) -> None:
    app = otel.app()

    @app.consume("orders")
    async def on_order(order: dict[str, int]) -> None:
        pass

    async with TestClient(app) as client:
        (worker,) = (w for w in client.runtime.workers if isinstance(w, ConsumerWorker))
        assert type(worker.processor.handler).__name__ == "ConsumerTelemetry"
        assert worker.processor.shared_ctx is None


async def test_without_a_meter_provider_no_instrument_is_registered(otel: Telemetry) -> None:
    app = App("billing", tracer_provider=otel.tracer_provider)  # traces only

    @app.consume("orders")
    async def on_order(order: dict[str, int]) -> None:
        pass

    assert meter_provider(Resources(app.name, None, app.tracer_provider, None)) is None
    gc.collect()  # providers of earlier tests leave the weak mapping now, not inside the block
    before = len(instruments._BY_PROVIDER)
    async with TestClient(app):
        assert len(instruments._BY_PROVIDER) == before


def test_no_op_providers_on_the_app_leave_telemetry_off() -> None:
    app = App(
        "billing",
        tracer_provider=trace.NoOpTracerProvider(),
        meter_provider=NoOpMeterProvider(),
    )

    @app.consume("orders")
    async def on_order(order: dict[str, int]) -> None:
        pass

    resources = Resources(app.name, None, app.tracer_provider, app.meter_provider)
    assert layers_for(app.consumers[0], resources) == []


def test_a_meter_provider_alone_turns_it_on(otel: Telemetry) -> None:
    app = App("billing", meter_provider=otel.meter_provider)

    @app.consume("orders")
    async def on_order(order: dict[str, int]) -> None:
        pass

    resources = Resources(app.name, None, app.tracer_provider, app.meter_provider)
    assert len(layers_for(app.consumers[0], resources)) == 1


async def test_a_publish_without_waiting_has_a_send_span_that_ends_with_its_delivery(
    otel: Telemetry,
) -> None:
    app = otel.app()

    @app.consume("invoices")
    async def on_invoice(message: Message) -> None:
        pass

    async with TestClient(app, partitions=1) as client:
        await app.publish("invoices", {"id": 7}, key="customer-7", wait=False)
        await client.drain()

    (send,) = otel.finished("send invoices")
    assert send.kind is SpanKind.PRODUCER
    assert send.status.status_code is StatusCode.UNSET
    attributes = dict(send.attributes or {})
    assert attributes["messaging.destination.partition.id"] == "0"
    assert attributes["messaging.kafka.offset"] == 0
    (process,) = otel.finished("process invoices")
    assert parent_of(process) == span_id(send)


async def test_a_record_lost_without_waiting_is_an_error_span_and_is_counted(
    otel: Telemetry,
) -> None:
    app = otel.app()

    client = TestClient(app)
    client.broker.max_request_size = 1000
    async with client:
        await app.publish("invoices", b"x" * 2000, key="customer-7", wait=False)
        await app.publish("invoices", b"small", wait=False)  # delivered, not counted
        await client.drain()
        metrics = otel.metrics()

    (lost, sent) = sorted(otel.finished("send invoices"), key=lambda s: s.start_time or 0)
    assert lost.status.status_code is StatusCode.ERROR
    assert dict(lost.attributes or {})["error.type"] == "taskflow.exceptions.RecordTooLarge"
    assert sent.status.status_code is StatusCode.UNSET
    assert values(metrics["taskflow.publish.undelivered"]) == {
        of(
            messaging__destination__name="invoices",
            error__type="taskflow.exceptions.RecordTooLarge",
        ): 1
    }
