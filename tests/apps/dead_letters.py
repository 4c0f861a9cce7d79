"""A consumer that dead-letters some records: ``reject …`` values are rejected, ``fail …`` ones
raise until their attempts run out, the rest are handled.

``DEAD_LETTERS_TOPIC`` is the topic it consumes, ``DEAD_LETTERS_DLQ`` its dead-letter topic and
``DEAD_LETTERS_GROUP`` its consumer group. With ``DEAD_LETTERS_FIXED`` set it is the app once its
bug is fixed: it handles every record. With ``DEAD_LETTERS_OUT`` it appends a line for each record
it handles to that file: ``<value> <taskflow-replayed-from header, or ->``.
"""

from __future__ import annotations

import os

from taskflow import App, Backoff, Message, Reject

app = App("dead-letters")

_fixed = bool(os.environ.get("DEAD_LETTERS_FIXED"))
_out_path = os.environ.get("DEAD_LETTERS_OUT")
_out = os.open(_out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if _out_path else None


@app.consume(
    os.environ.get("DEAD_LETTERS_TOPIC", "events"),
    group=os.environ.get("DEAD_LETTERS_GROUP", "dead-letters"),
    dead_letter=os.environ.get("DEAD_LETTERS_DLQ", "events.dlq"),
    max_attempts=2,
    retry=Backoff(initial=0.01, maximum=0.05),
)
async def handle(message: Message) -> None:
    payload = message.value or b""
    if not _fixed and payload.startswith(b"reject"):
        raise Reject(f"not a valid order: {payload.decode()}")
    if not _fixed and payload.startswith(b"fail"):
        raise ValueError(f"cannot price {payload.decode()}\nsecond line of the message")
    if _out is not None:
        origin = message.header("taskflow-replayed-from") or b"-"
        os.write(_out, payload + b" " + origin + b"\n")
