"""Your own middleware: time every handler, tag its log lines with a tenant.

Run it on the embedded memory broker:

    taskflow run examples.middleware:app
"""

from __future__ import annotations

import time

from taskflow import App, Context, Message, Middleware, Reject
from taskflow.handler import Handler, Job


# --8<-- [start:timing]
class Timing:
    """Logs how long each handler run took, and counts the slow ones."""

    def __init__(self, next: Handler, *, slow_after: float = 0.5) -> None:
        self.next = next
        self.slow_after = slow_after
        self.slow = 0

    async def __call__(self, job: Job, ctx: Context) -> None:
        started = time.perf_counter()
        try:
            await self.next(job, ctx)
        finally:
            took = time.perf_counter() - started
            if took >= self.slow_after:
                self.slow += 1
                ctx.logger.warning("%s was slow: %.3fs", job, took)
            else:
                ctx.logger.debug("%s took %.3fs", job, took)


# --8<-- [end:timing]


class RequireTenant:
    """Rejects a message with no `tenant` header: dead-lettered at once."""

    def __init__(self, next: Handler) -> None:
        self.next = next

    async def __call__(self, job: Job, ctx: Context) -> None:
        if isinstance(job, Message) and job.header("tenant") is None:
            raise Reject("no tenant header")
        await self.next(job, ctx)


# --8<-- [start:register]
app = App("middleware-demo", middleware=[Middleware(Timing, slow_after=0.2)])


@app.consume(
    "orders", middleware=[Middleware(RequireTenant)], dead_letter="orders.dlq"
)
async def on_order(order: dict[str, object], ctx: Context) -> None:
    assert ctx.message is not None
    tenant = (ctx.message.header("tenant") or b"").decode()
    ctx.logger.info("order %s for tenant %s", order["id"], tenant)


# --8<-- [end:register]


@app.every(seconds=5, run_at_start=True)
async def place_order(ctx: Context) -> None:
    await ctx.publish("orders", {"id": 1}, headers={"tenant": "acme"})
    await ctx.publish("orders", {"id": 2})  # no tenant: dead-lettered
