"""The Idempotency guide's handlers: a payment applied once with its Redis
effects, and an hourly report done once per tick.

    taskflow run examples.idempotency:app
"""

# --8<-- [start:app]
from __future__ import annotations

from taskflow import App, Context, Message

app = App("billing", redis_url="redis://localhost:6379/0")


def payment_id(message: Message) -> bytes | None:
    return message.header("payment-id")  # header values are bytes


@app.consume("payments", idempotent=True, idempotency_key=payment_id)
async def on_payment(payment: dict, ctx: Context) -> None:
    account = payment["account"]
    ctx.transaction.hincrby("balances", account, payment["amount"])
    ctx.transaction.rpush(f"history:{account}", payment["id"])


@app.every(hours=1, idempotent=True)  # a done mark per tick
async def hourly_report(ctx: Context) -> None:
    ctx.logger.info("report for %s", ctx.scheduled_at)


# --8<-- [end:app]
