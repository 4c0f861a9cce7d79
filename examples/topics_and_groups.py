"""Several topics and consumer groups in one app: user and order events.

Each registration is one consumer in one group. Two groups reading the same
topic each get every message; one registration may read several topics in one
group. A periodic task publishes some traffic so that there is something to see:

    taskflow run examples.topics_and_groups:app
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass

from taskflow import App, Context, Message

app = App("events")


@app.on_startup
async def prepare() -> None:
    app.state.actions = defaultdict(list)  # user -> actions, in order
    app.state.orders = []
    app.state.ledger = []


# --8<-- [start:groups]
@dataclass
class UserEvent:
    user: str
    action: str


@app.consume("user-events", group="user-event-consumer-group")
async def on_user_event(event: UserEvent, ctx: Context) -> None:
    ctx.state.actions[event.user].append(event.action)


@app.consume(
    "order-events",
    group="order-event-consumer-group",
    ordering="key",
    concurrency=8,
)
async def on_order_event(order: dict[str, object], ctx: Context) -> None:
    ctx.state.orders.append(order["id"])


@app.consume("order-events", "refund-events", group="ledger")
async def ledger(message: Message, ctx: Context) -> None:
    """A second group on order-events: it gets every order, and refunds."""
    ctx.state.ledger.append((message.topic, message.value))


# --8<-- [end:groups]

numbers = itertools.count(1)


@app.every(seconds=2)
async def simulate_traffic(ctx: Context) -> None:
    n = next(numbers)
    user = f"user-{n % 2}"
    await ctx.publish("user-events", UserEvent(user, "login"), key=user)
    await ctx.publish("order-events", {"id": n, "user": user}, key=user)
    if n % 3 == 0:
        await ctx.publish("refund-events", {"order": n - 1}, key=user)
