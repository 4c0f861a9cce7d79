"""The built-in middleware with batch consumers: idempotency, rate limits, timeouts and spans."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis

from taskflow import App, Backoff, Batch, BatchError, Context, Message
from taskflow.codec import encode_headers, encode_value
from taskflow.middleware.ratelimit import LocalRateLimit, smooth_limiter
from taskflow.testing import TestClient
from tests._redis import REDIS_URL

FAST = Backoff(initial=0.01, maximum=0.01, jitter=0)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def waiting(
    client: TestClient, values: list[int], headers: list[dict[str, str]] | None = None
) -> None:
    """Publish `values` to `events` before the app starts, so its first fetch finds them all."""
    await client.broker.start()
    for number, value in enumerate(values):
        extra = encode_headers(headers[number] if headers else None)
        await client.broker.publish("events", encode_value(value), key=None, headers=extra)


def values(messages: list[Message]) -> list[int]:
    return [int(m.value) for m in messages]


# -- idempotency ----------------------------------------------------------------------------


@pytest.mark.redis
async def test_a_batch_skips_records_whose_key_is_done_and_marks_the_rest(redis: Redis) -> None:
    app = App("bdup", redis_url=REDIS_URL)
    batches: list[list[int]] = []

    @app.consume("events", batch=10, batch_wait=0.05, idempotent=True)
    async def store(events: list[Message]) -> None:
        batches.append(values(events))

    client = TestClient(app, partitions=1)
    await waiting(client, [1, 2, 3], [{"idempotency-key": key} for key in "aba"])
    async with client:
        await client.drain()
        await client.publish("events", 4, headers={"idempotency-key": "b"})
        await client.publish("events", 5, headers={"idempotency-key": "c"})
        await client.drain()
        assert client.committed("bdup", "events", 0) == 5
    assert batches == [[1, 2], [5]]
    for key in ("a", "b", "c"):
        assert (await redis.get(f"taskflow:{{bdup}}:idem:{key}")).startswith(b"done:")


@pytest.mark.redis
async def test_a_batch_leaves_out_records_the_partition_ledger_says_are_done(
    redis: Redis,
) -> None:
    # As if a previous owner ran offsets 0 and 1 and crashed before committing them.
    await redis.hset("taskflow:{bledger}:offsets:events:0", "base", 2)
    app = App("bledger", redis_url=REDIS_URL)
    batches: list[list[int]] = []

    @app.consume("events", batch=10, batch_wait=0.05, idempotent=True)
    async def store(events: list[Message]) -> None:
        batches.append(values(events))

    client = TestClient(app, partitions=1)
    await waiting(client, list(range(4)))
    async with client:
        await client.drain()
        assert client.committed("bledger", "events", 0) == 4
    assert batches == [[2, 3]]
    assert await redis.hget("taskflow:{bledger}:offsets:events:0", "base") == b"4"


@pytest.mark.redis
async def test_batch_error_marks_the_records_before_it_done_and_releases_the_rest(
    redis: Redis,
) -> None:
    app = App("berr", redis_url=REDIS_URL)
    batches: list[list[int]] = []

    @app.consume("events", batch=10, batch_wait=0.05, idempotent=True, retry=FAST)
    async def store(events: list[Message]) -> None:
        batches.append(values(events))
        if len(batches) == 1:
            # records 0 and 1 are done; the batch the handler got starts at record 1
            raise BatchError(1, ConnectionError("row conflicted"))

    client = TestClient(app, partitions=1)
    await waiting(client, list(range(4)), [{"idempotency-key": f"k{v}"} for v in range(4)])
    async with client:
        await client.drain()
        assert client.committed("berr", "events", 0) == 4
    assert batches == [[0, 1, 2, 3], [1], [2, 3]]
    for value in range(4):
        assert (await redis.get(f"taskflow:{{berr}}:idem:k{value}")).startswith(b"done:")


# -- rate limits and timeouts ---------------------------------------------------------------


async def test_a_batch_takes_one_run_of_the_rate_limit_per_record() -> None:
    seen: list[int] = []

    async def handler(job: object, ctx: object) -> None:
        assert isinstance(job, Batch)
        seen.append(len(job))

    limiter = smooth_limiter(1000)  # a bucket of 11 runs
    limit = LocalRateLimit(handler, limiter=limiter)  # type: ignore[arg-type]
    batch = Batch.of([Message("events", 0, i, None, b"") for i in range(50)])
    ctx = Context(App("limits"), "store", None, asyncio.Event())  # type: ignore[arg-type]
    await limit(batch, ctx)
    assert seen == [50]
    assert limit.waits == 1  # 50 runs do not fit the bucket: it waited for them
    assert not limiter.has_capacity(5)


async def test_a_batch_past_its_timeout_is_retried_whole() -> None:
    app = App("slow")
    calls: list[int] = []

    @app.consume("events", batch=10, batch_wait=0.05, timeout=0.05, retry=FAST)
    async def store(events: list[Message]) -> None:
        calls.append(len(events))
        if len(calls) == 1:
            await asyncio.sleep(10)

    client = TestClient(app, partitions=1)
    await waiting(client, list(range(3)))
    async with client:
        await client.drain()
        assert client.committed("slow", "events", 0) == 3
    assert calls == [3, 3]


# -- spans ----------------------------------------------------------------------------------


@pytest.fixture
def spans() -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter, provider
    provider.shutdown()


async def test_a_batch_gets_one_span_linked_to_each_records_trace(
    spans: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    exporter, provider = spans
    app = App("traced", tracer_provider=provider)

    @app.consume("events", batch=10, batch_wait=0.05)
    async def store(events: list[Message]) -> None: ...

    client = TestClient(app, partitions=1)
    await waiting(client, [1, 2], [{"traceparent": TRACEPARENT}, {}])
    async with client:
        await client.drain()

    (span,) = [s for s in exporter.get_finished_spans() if s.name == "process events"]
    assert span.kind is SpanKind.CONSUMER
    assert span.attributes is not None
    assert span.attributes["messaging.batch.message_count"] == 2
    assert span.parent is None
    (link,) = span.links
    assert link.context.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
    assert link.attributes == {"messaging.kafka.offset": 0}
