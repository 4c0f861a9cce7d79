"""A consumer that dead-letters some records: ``reject …`` values are rejected, ``fail …`` ones
raise until their attempts run out, the rest are handled.

``DEAD_LETTERS_TOPIC`` is the topic it consumes, ``DEAD_LETTERS_DLQ`` its dead-letter topic and
``DEAD_LETTERS_GROUP`` its consumer group.
"""

from __future__ import annotations

import os

from taskflow import App, Backoff, Reject

app = App("dead-letters")


@app.consume(
    os.environ.get("DEAD_LETTERS_TOPIC", "events"),
    group=os.environ.get("DEAD_LETTERS_GROUP", "dead-letters"),
    dead_letter=os.environ.get("DEAD_LETTERS_DLQ", "events.dlq"),
    max_attempts=2,
    retry=Backoff(initial=0.01, maximum=0.05),
)
async def handle(payload: bytes) -> None:
    if payload.startswith(b"reject"):
        raise Reject(f"not a valid order: {payload.decode()}")
    if payload.startswith(b"fail"):
        raise ValueError(f"cannot price {payload.decode()}\nsecond line of the message")
