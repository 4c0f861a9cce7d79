"""The quickstart: a periodic task publishes an order each second, a consumer
handles it.

Run it on the embedded memory broker (no Kafka needed) and stop it with Ctrl+C:

    taskflow run examples.quickstart:app
"""

# --8<-- [start:app]
from __future__ import annotations

import itertools
from dataclasses import dataclass

from taskflow import App, Context

app = App("quickstart")


@dataclass
class Order:
    id: int
    customer: str
    amount_cents: int


# --8<-- [end:app]


# --8<-- [start:consumer]
@app.consume("orders")
async def on_order(order: Order, ctx: Context) -> None:
    """Handle an order: here, just log it."""
    ctx.logger.info(
        "order %d from %s: %.2f EUR",
        order.id,
        order.customer,
        order.amount_cents / 100,
    )


# --8<-- [end:consumer]


# --8<-- [start:periodic]
order_ids = itertools.count(1)


@app.every(seconds=1)
async def place_order(ctx: Context) -> None:
    """Publish one order, keyed by customer so theirs stay in order."""
    number = next(order_ids)
    order = Order(
        id=number, customer=f"customer-{number % 3}", amount_cents=1250
    )
    await ctx.publish("orders", order, key=order.customer)


# --8<-- [end:periodic]
