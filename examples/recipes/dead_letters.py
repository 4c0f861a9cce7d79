"""Retries, then a dead-letter topic: a payment that keeps failing ends up in
`payments.DLQ`, with `taskflow-` headers that say where it came from and why.

Start Kafka, then run it:

    docker run -d --name kafka -p 9092:9092 apache/kafka:3.9.0
    taskflow run examples.recipes.dead_letters:app \
        --broker kafka://localhost:9092

`examples/recipes/read_dead_letters.py` reads what landed in `payments.DLQ`.
"""

# --8<-- [start:app]
from __future__ import annotations

from dataclasses import dataclass

from taskflow import App, Backoff, Context

app = App("payments")


@dataclass
class Payment:
    id: str
    account: str
    amount_cents: int
    gateway: str = "card"


class CardDeclined(Exception):
    """The bank said no: no retry can change that."""


async def charge(payment: Payment) -> None:
    """Stands in for the call to a payment provider."""
    if payment.gateway == "offline":
        raise ConnectionError(f"gateway {payment.gateway!r} did not answer")
    if payment.amount_cents <= 0:
        raise CardDeclined(f"payment {payment.id}: amount must be positive")


@app.consume(
    "payments",
    dead_letter="payments.DLQ",
    # 3 attempts in all: the first, then 2 retries 0.2 s and 0.4 s later
    max_attempts=3,
    retry=Backoff(initial=0.2, maximum=2),
    # straight to the dead-letter topic, without a retry
    reject_on=(CardDeclined,),
)
async def on_payment(payment: Payment, ctx: Context) -> None:
    await charge(payment)
    ctx.logger.info("charged payment %s", payment.id)


# --8<-- [end:app]
