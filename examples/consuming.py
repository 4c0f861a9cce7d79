"""The Consuming guide's handlers: retries, a plain `def`, rejects and dead
letters, retry topics, publishing from a handler (and without waiting for the
broker).

    taskflow run examples.consuming:app
"""

from __future__ import annotations

from taskflow import App, Backoff, Context, Message, Reject

# --8<-- [start:memory]
app = App("shipping", buffer_bytes="256MiB")  # or in bytes: 256 * 2**20
# --8<-- [end:memory]


# --8<-- [start:retry]
@app.consume("shipments", retry=Backoff(initial=0.5, maximum=10))
async def on_shipment(shipment: dict, ctx: Context) -> None:
    ctx.logger.info("attempt %d at shipment %s", ctx.attempt, shipment["id"])


# --8<-- [end:retry]


# --8<-- [start:sync]
@app.consume("audit")
def on_audit(message: Message) -> None:  # a plain def: in a worker thread
    print(message.topic, message.offset, message.value)


# --8<-- [end:sync]


# --8<-- [start:reject]
class InvalidReturn(Exception):
    """A return no retry can fix."""


@app.consume(
    "returns",
    dead_letter="returns.DLQ",
    max_attempts=5,
    reject_on=(InvalidReturn,),
)
async def on_return(item: dict, ctx: Context) -> None:
    if item["amount"] < 0:
        raise Reject("negative amount")
    if "order" not in item:
        raise InvalidReturn("a return names its order")
    # --8<-- [start:publish]
    await ctx.publish(
        "refunds",
        {"order": item["order"], "amount": item["amount"]},
        key=item["customer"],
        headers={"return-id": item["id"]},  # str or bytes; read back as bytes
    )
    # --8<-- [end:publish]


# --8<-- [end:reject]


# --8<-- [start:retry-topics]
class CarrierDown(Exception):
    """The carrier's API did not answer: worth trying again later."""


@app.consume("labels", retry_topics=[10, 60, 600], dead_letter="labels.DLQ")
async def on_label(label: dict, ctx: Context) -> None:
    # 1 here; 2, 3 and 4 on the retry topics labels.retry.10s, .60s and .600s
    ctx.logger.info("attempt %d at label %s", ctx.attempt, label["id"])
    if label.get("carrier") == "down":
        raise CarrierDown(f"no answer for label {label['id']}")


# --8<-- [end:retry-topics]


# --8<-- [start:fanout]
@app.consume("orders")
async def on_order(order: dict, ctx: Context) -> None:
    for line in order["lines"]:  # each publish returns once queued
        await ctx.publish("order-lines", line, key=order["id"], wait=False)


# --8<-- [end:fanout]
