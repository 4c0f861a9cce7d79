"""The home page's example: a consumer with dead letters, and a periodic task.

taskflow run examples.billing:app
"""

# --8<-- [start:app]
from taskflow import App, Context

app = App("billing")


@app.consume("orders", dead_letter="orders.DLQ")
async def on_order(order: dict, ctx: Context) -> None:
    await ctx.publish("invoices", {"order": order["id"]}, key=order["customer"])


@app.every(minutes=5)
async def cleanup(ctx: Context) -> None:
    ctx.logger.info("cleaning up the run of %s", ctx.scheduled_at)


# --8<-- [end:app]
