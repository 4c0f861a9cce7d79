"""The `shop` service's workers: a project of your own, packaged and deployed
with the Dockerfile and Kubernetes manifest beside this package.

    taskflow run shop.app:app              # from the project's directory
"""

# --8<-- [start:app]
from __future__ import annotations

from taskflow import App, Context

app = App("shop", http_port=8080)  # /healthz, /readyz, /metrics, /status


@app.consume("orders", dead_letter="orders.DLQ")
async def on_order(order: dict, ctx: Context) -> None:
    ctx.logger.info("order %s for %s", order["id"], order["customer"])
    await ctx.publish(
        "shipments", {"order": order["id"]}, key=order["customer"]
    )


# --8<-- [end:app]
