"""An app with something for each panel of the dashboard: a consumer that dead-letters records
starting with ``reject`` and takes an hour over records starting with ``slow`` (so the records
after one back up behind it), and a periodic task of the fleet every second.

``DASHBOARD_TOPIC`` is the topic it consumes, ``DASHBOARD_DLQ`` its dead-letter topic and
``DASHBOARD_GROUP`` its consumer group.
"""

from __future__ import annotations

import asyncio
import os

from taskflow import App, Context, Message, Reject

app = App("dashboard-fleet")


@app.consume(
    os.environ.get("DASHBOARD_TOPIC", "orders"),
    group=os.environ.get("DASHBOARD_GROUP", "dashboard-fleet"),
    dead_letter=os.environ.get("DASHBOARD_DLQ", "orders.dlq"),
    max_attempts=1,
)
async def price_order(message: Message) -> None:
    value = message.value or b""
    if value.startswith(b"reject"):
        raise Reject(f"not a valid order: {value.decode()}")
    if value.startswith(b"slow"):
        await asyncio.sleep(3600)


@app.every(seconds=1)
async def refresh_rates(ctx: Context) -> None:
    """Runs once a second on one replica of the fleet."""
