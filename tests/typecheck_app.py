"""The registration API as an editor and mypy see it; mypy checks this file (pyproject.toml).

Each decorator takes its `add_*` method's options with their types, so the calls in
`registrations` type-check, and each call in `refused` carries a `type: ignore` for the error
mypy must report there: strict mode fails on an ignore that no longer silences anything, so this
file stops type-checking if a decorator's options lose their types. Nothing here is run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from taskflow import App, Backoff, Codec, Context, Message, MsgpackCodec


class Lines:
    """A codec of the app's own, a `Codec` by its shape alone."""

    content_type = "text/plain"

    def decoder(self, annotation: Any) -> Callable[[bytes], list[str]]:
        return lambda value: value.decode().splitlines()

    def encode(self, value: Any) -> bytes:
        return "\n".join(value).encode()


def codecs() -> None:
    app = App("lines", codec=MsgpackCodec(), codecs=[Lines()])
    own: Codec = Lines()

    @app.consume("lines", codec=own, batch=10)
    async def on_lines(batch: list[list[str]], ctx: Context) -> None:
        await ctx.publish("lines.out", batch[0], codec=Lines())
        await app.publish("lines.out", {"n": len(batch)}, codec=MsgpackCodec())


@dataclass
class Invoice:
    order: str
    cents: int


def topics(app: App) -> None:
    invoices = app.topic("invoices", Invoice, key=str, description="One per order.")
    counts = app.topic("counts", dict[str, int], codec=MsgpackCodec())
    anything = app.topic("anything")

    @app.consume(invoices, "refunds", group="books")
    async def book(invoice: Invoice, ctx: Context) -> None:
        await invoices.publish(Invoice("o1", 1), key="c1", headers={"a": "b"}, wait=False)
        await invoices.publish(None, key="c1")
        await ctx.publish(invoices, invoice)
        await app.publish(counts, {"a": 1})
        await ctx.publish("plain", {"any": "thing"})
        await anything.publish(object())

    app.add_consumer(book, invoices)


def registrations(app: App) -> None:
    @app.consume(
        "orders",
        "refunds",
        group="payments",
        name="on_payment",
        ordering="key",
        concurrency=4,
        timeout=2.5,
        retry=Backoff(initial=0.5, maximum=10),
        max_attempts=3,
        dead_letter="payments.DLQ",
        reject_on=(KeyError, ValueError),
        middleware=(),
        max_buffered=100,
        rate_limit="100/s",
        rate_limit_scope="global",
        idempotent=True,
        idempotency_key=lambda message: message.key,
        idempotency_lease=timedelta(seconds=30),
        idempotency_retention=3600,
        on_store_error="proceed",
    )
    async def on_payment(payment: dict[str, object], ctx: Context) -> None: ...

    @app.every(
        minutes=5,
        name="sweep",
        fleet=True,
        catch_up="latest",
        grace=timedelta(minutes=10),
        lease=60,
        run_at_start=True,
        jitter=10,
        timeout=60,
        middleware=(),
        idempotent=False,
        idempotency_lease=30,
        idempotency_retention=timedelta(days=1),
        on_store_error="fail",
    )
    async def sweep(ctx: Context) -> None: ...

    @app.cron("0 3 * * *", tz="Europe/Berlin", hash_id="report", name="report", fleet=False)
    async def report(ctx: Context) -> None: ...

    @app.worker
    async def poller(ctx: Context) -> None: ...

    def message_key(message: Message) -> str:
        return message.topic

    app.add_consumer(on_payment, "orders", idempotent=True, idempotency_key=message_key)

    @app.consume("labels", dead_letter="labels.DLQ", retry_topics=[10, 60.5, timedelta(hours=1)])
    async def on_label(label: dict[str, object]) -> None: ...


def refused(app: App) -> None:
    app.consume("orders", ordering="fifo")  # type: ignore[arg-type]
    app.consume("orders", concurency=4)  # type: ignore[call-arg]
    app.consume("orders", dead_letter=b"orders.DLQ")  # type: ignore[arg-type]
    app.consume("orders", dead_letter="d", retry_topics=["10s"])  # type: ignore[list-item]
    app.every(minutes=5, catch_up="some")  # type: ignore[arg-type]
    app.every(minutes=5, jitter="10s")  # type: ignore[arg-type]
    app.cron("0 3 * * *", fleet="yes")  # type: ignore[arg-type]
    app.cron("0 3 * * *", on_store_error="retry")  # type: ignore[arg-type]
    app.consume("orders", codec="application/msgpack")  # type: ignore[arg-type]
    App("orders", codec=MsgpackCodec)  # type: ignore[arg-type]


async def wrong_payloads(app: App, ctx: Context) -> None:
    invoices = app.topic("invoices", Invoice, key=str)
    counts = app.topic("counts", dict[str, int])
    await invoices.publish({"order": "o1", "cents": 1})  # type: ignore[arg-type]
    await invoices.publish(Invoice("o1", 1), key=1)  # type: ignore[arg-type]
    await ctx.publish(invoices, {"order": "o1"})  # type: ignore[misc]
    await app.publish(invoices, "o1")  # type: ignore[misc]
    await counts.publish({"a": "b"})  # type: ignore[dict-item]
    app.topic("invoices", Invoice, key=int)  # type: ignore[arg-type]
