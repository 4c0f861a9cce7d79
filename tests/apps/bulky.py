"""A slow consumer of large records, for measuring what a process holds in memory.

Configured by environment variables:

- ``BULKY_TOPIC``: the topic; ``BULKY_GROUP``: the consumer group;
- ``BULKY_OUT``: the file ``<partition> <offset> <bytes>`` is appended to as each handler finishes;
- ``BULKY_DELAY_MS``: how long each handler sleeps (default 100).

The handler touches nothing but the record's length, so what the process holds beyond its
baseline is the records taskflow and its Kafka client buffer.
"""

from __future__ import annotations

import asyncio
import os

from taskflow import App, Message

app = App("bulky")

_out = os.open(os.environ["BULKY_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
_delay = int(os.environ.get("BULKY_DELAY_MS", "100")) / 1000


async def on_record(message: Message) -> None:
    await asyncio.sleep(_delay)
    os.write(_out, f"{message.partition} {message.offset} {len(message.value)}\n".encode())


app.add_consumer(on_record, os.environ["BULKY_TOPIC"], group=os.environ["BULKY_GROUP"])
