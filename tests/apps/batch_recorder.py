"""A batch consumer that records every record of each batch it handles, for real-broker tests.

Configured by environment variables:

- ``BATCH_TOPIC`` / ``BATCH_GROUP``: the topic and the consumer group;
- ``BATCH_OUT``: the file each handled record is appended to, one line
  ``<pid> <partition> <offset> <value>``, all the lines of a batch in one ``os.write``;
- ``BATCH_STARTED``: optional file where ``<pid> <partition> <offset>`` is appended for each
  record of a batch when the batch starts;
- ``BATCH_SIZE`` / ``BATCH_WAIT``: the batch size (default 100) and `batch_wait` (default 0.05);
- ``BATCH_ORDERING``: ``partition`` (default) or ``none``;
- ``BATCH_DELAY_MS``: each batch sleeps a random 0..N ms before it writes (default 0);
- ``BATCH_FAIL_VALUE``: the record with this exact value fails, every time: the handler writes the
  records before it and raises `BatchError` for it;
- ``BATCH_IDEMPOTENT``: ``1`` for ``idempotent=True`` (Redis from ``TASKFLOW_REDIS_URL``).
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

from taskflow import App, Backoff, BatchError, Message

app = App("batch-recorder")

_out = os.open(os.environ["BATCH_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
_started_path = os.environ.get("BATCH_STARTED")
_started = os.open(_started_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT) if _started_path else None
_delay_ms = int(os.environ.get("BATCH_DELAY_MS", "0"))
_fail_value = os.environ.get("BATCH_FAIL_VALUE", "").encode() or None
_options: dict[str, Any] = {
    "group": os.environ["BATCH_GROUP"],
    "batch": int(os.environ.get("BATCH_SIZE", "100")),
    "batch_wait": float(os.environ.get("BATCH_WAIT", "0.05")),
    "ordering": os.environ.get("BATCH_ORDERING", "partition"),
    "retry": Backoff(initial=0.05, maximum=0.2),
    "idempotent": os.environ.get("BATCH_IDEMPOTENT") == "1",
}


def _lines(messages: list[Message]) -> bytes:
    pid = os.getpid()
    return "".join(
        f"{pid} {m.partition} {m.offset} {m.value.decode()}\n" for m in messages
    ).encode()


@app.consume(os.environ["BATCH_TOPIC"], **_options)
async def store(events: list[Message]) -> None:
    if _started is not None:
        pid = os.getpid()
        os.write(_started, "".join(f"{pid} {m.partition} {m.offset}\n" for m in events).encode())
    if _delay_ms:
        await asyncio.sleep(random.uniform(0, _delay_ms) / 1000)
    for index, event in enumerate(events):
        if _fail_value is not None and event.value == _fail_value:
            if index:
                os.write(_out, _lines(events[:index]))
            raise BatchError(index, RuntimeError(f"cannot store {event.value!r}"))
    os.write(_out, _lines(events))
