"""The orders service: Kafka, Redis idempotency, dead letters, traces, probes.

Each order is counted once into a customer's revenue in Redis, however often
Kafka delivers it (`idempotent=True` and `ctx.transaction`); an invalid order
goes to `orders.DLQ` at once, and one that keeps failing goes there after three
attempts. Every handled order publishes an invoice event. The revenue is logged
at start and then every minute, by one replica of the fleet.

Start Kafka and Redis, then run it (`/healthz`, `/readyz`, `/metrics` and
`/status` answer on port 8080, and `/asyncapi` shows its contract):

    taskflow run examples.orders:app

`TASKFLOW_BROKER` and `TASKFLOW_REDIS_URL` (or `--broker` and `--redis`) point
it elsewhere.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
)
from redis.asyncio import Redis

from taskflow import App, Backoff, Context, Message

REVENUE = "orders:revenue"  # a Redis hash: customer -> cents


# --8<-- [start:telemetry]
def console_tracing() -> TracerProvider:
    """Spans printed to stdout as JSON; in production, an OTLP exporter."""
    provider = TracerProvider(
        resource=Resource.create({"service.name": "orders"})
    )
    provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    return provider


# --8<-- [end:telemetry]


# --8<-- [start:app]
@asynccontextmanager
async def lifespan(app: App) -> AsyncIterator[None]:
    """A Redis client of our own for reads, open while the workers run."""
    app.state.redis = Redis.from_url(app.redis_url, decode_responses=True)
    try:
        yield
    finally:
        await app.state.redis.aclose()


app = App(
    "orders",
    version="1.0.0",
    description="Counts each order into its customer's revenue, once.",
    broker=os.environ.get("TASKFLOW_BROKER", "kafka://localhost:9092"),
    redis_url=os.environ.get("TASKFLOW_REDIS_URL", "redis://localhost:6379/0"),
    lifespan=lifespan,
    tracer_provider=console_tracing(),
    # /healthz, /readyz, /metrics, /status; --http-port overrides the port
    http_port=8080,
)
# --8<-- [end:app]


# --8<-- [start:consumer]
@dataclass
class Order:
    id: str
    customer: str
    amount_cents: int


@dataclass
class Invoice:
    order: str
    amount_cents: int


# the topic this service writes, with what it carries: typed for mypy, and
# in the service's AsyncAPI document (`taskflow asyncapi examples.orders:app`)
invoices = app.topic(
    "invoices", Invoice, key=str, description="One invoice per order handled."
)


class InvalidOrder(Exception):
    """An order no retry can fix."""


def order_id(message: Message) -> bytes | None:
    """Two deliveries are the same order if the `order-id` header is."""
    return message.header("order-id")


@app.consume(
    "orders",
    # one customer's orders in order; different customers concurrently
    ordering="key",
    dead_letter="orders.DLQ",
    max_attempts=3,
    retry=Backoff(initial=0.5, maximum=5),
    reject_on=(InvalidOrder,),
    timeout=10,
    idempotent=True,
    idempotency_key=order_id,
)
async def on_order(order: Order, ctx: Context) -> None:
    """Counts the order into its customer's revenue and invoices it."""
    if order.amount_cents <= 0:
        raise InvalidOrder(f"order {order.id}: the amount must be positive")
    # Applied with the order's done mark, in one MULTI/EXEC: counted once, or
    # not at all.
    ctx.transaction.hincrby(REVENUE, order.customer, order.amount_cents)
    await invoices.publish(
        Invoice(order.id, order.amount_cents),
        key=order.customer,
        headers={"order-id": order.id},
    )
    ctx.logger.info(
        "order %s: %d cents from %s",
        order.id,
        order.amount_cents,
        order.customer,
    )


# --8<-- [end:consumer]


# --8<-- [start:report]
@app.every(minutes=1, run_at_start=True)
async def revenue_report(ctx: Context) -> None:
    """With Redis, one replica of the fleet runs each tick."""
    revenue = await ctx.state.redis.hgetall(REVENUE)
    total = sum(int(cents) for cents in revenue.values())
    ctx.logger.info("revenue: %d cents from %d customers", total, len(revenue))


# --8<-- [end:report]
