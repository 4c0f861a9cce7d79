"""The handler timeout times the handler, not the waits around it, and says so in the span."""

from __future__ import annotations

import asyncio

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from taskflow import App, Backoff, Context, HandlerTimeout, Message
from taskflow.testing import TestClient

FAST = Backoff(initial=0.01, maximum=0.01, jitter=0)


async def test_waiting_for_a_rate_limit_does_not_count_against_the_timeout() -> None:
    app = App("patient")
    attempts: list[int] = []

    async def on_event(message: Message, ctx: Context) -> None:
        attempts.append(ctx.attempt)

    # At 4/s the fourth message waits ~0.75 s for its turn, far past the 0.2 s timeout.
    app.add_consumer(on_event, "events", timeout=0.2, rate_limit="4/s", retry=FAST)
    async with TestClient(app, partitions=1) as client:
        for value in range(4):
            await client.publish("events", value)
        await client.drain()

    assert attempts == [1, 1, 1, 1]  # none timed out, none retried


async def test_a_timed_out_attempt_is_a_handler_timeout_in_its_span_and_is_retried() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = App("slowpoke", tracer_provider=provider)
    attempts: list[int] = []

    async def on_event(message: Message, ctx: Context) -> None:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            await asyncio.sleep(5)

    app.add_consumer(on_event, "events", timeout=0.1, retry=FAST)
    try:
        async with TestClient(app, partitions=1) as client:
            await client.publish("events", 1)
            await client.drain()
    finally:
        provider.shutdown()

    assert attempts == [1, 2]
    first, second = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0)
    assert first.attributes is not None
    assert first.attributes["error.type"] == f"{HandlerTimeout.__module__}.HandlerTimeout"
    assert [event.name for event in first.events][-1] == "taskflow.retry"
    assert second.attributes is not None
    assert "error.type" not in second.attributes
