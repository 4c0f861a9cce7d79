"""A consumer that records every message it handles, for the real-broker process tests.

Configured by environment variables, so one module serves every scenario:

- ``RECORDER_TOPICS``: comma-separated topics (default ``events``);
- ``RECORDER_GROUP``: the consumer group (default the app name, ``recorder``);
- ``RECORDER_OUT``: the file each handled message is appended to, one line
  ``<pid> <topic> <partition> <offset> <key> <value>``;
- ``RECORDER_STARTED``: optional file where ``<pid> <topic> <partition> <offset>`` is appended
  when a handler starts (so a test can tell what was in flight at a kill);
- ``RECORDER_ORDERING`` / ``RECORDER_CONCURRENCY``: the ordering mode and concurrency;
- ``RECORDER_DELAY_MS``: each handler sleeps a random 0..N ms (default 0);
- ``RECORDER_MIN_DELAY_MS``: the least it sleeps (default 0; equal to the above for a fixed delay);
- ``RECORDER_SLOW_EVERY`` / ``RECORDER_SLOW_MS``: a message whose offset is a multiple of N sleeps
  this long instead (so some handlers stay busy while later ones finish);
- ``RECORDER_FAIL_VALUE``: a handler for this exact value always raises;
- ``RECORDER_DLQ`` / ``RECORDER_MAX_ATTEMPTS``: the dead-letter topic and attempts;
- ``RECORDER_RETRY_MS``: the initial retry backoff (default 50 ms);
- ``RECORDER_PAYLOAD``: ``bytes`` (default) or ``dict``, the handler's payload type.

Lines are written with one ``os.write`` on an ``O_APPEND`` descriptor, so replicas can share a file.
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

from taskflow import App, Backoff, Context, Message

app = App("recorder")

_topics = os.environ.get("RECORDER_TOPICS", "events").split(",")
_delay_ms = int(os.environ.get("RECORDER_DELAY_MS", "0"))
_min_delay_ms = int(os.environ.get("RECORDER_MIN_DELAY_MS", "0"))
_slow_every = int(os.environ.get("RECORDER_SLOW_EVERY", "0"))
_slow_ms = int(os.environ.get("RECORDER_SLOW_MS", "0"))
_fail_value = os.environ.get("RECORDER_FAIL_VALUE", "").encode() or None
_out = os.open(os.environ["RECORDER_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
_started_path = os.environ.get("RECORDER_STARTED")
_started = os.open(_started_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT) if _started_path else None
_options: dict[str, Any] = {
    "group": os.environ.get("RECORDER_GROUP") or None,
    "ordering": os.environ.get("RECORDER_ORDERING", "partition"),
    "retry": Backoff(initial=int(os.environ.get("RECORDER_RETRY_MS", "50")) / 1000, maximum=1),
}
if "RECORDER_CONCURRENCY" in os.environ:
    _options["concurrency"] = int(os.environ["RECORDER_CONCURRENCY"])
if "RECORDER_DLQ" in os.environ:
    _options["dead_letter"] = os.environ["RECORDER_DLQ"]
    _options["max_attempts"] = int(os.environ.get("RECORDER_MAX_ATTEMPTS", "3"))


def _line(message: Message) -> str:
    return f"{os.getpid()} {message.topic} {message.partition} {message.offset}"


async def record(message: Message) -> None:
    if _started is not None:
        os.write(_started, f"{_line(message)}\n".encode())
    if _slow_every and message.offset % _slow_every == 0:
        await asyncio.sleep(_slow_ms / 1000)
    elif _delay_ms:
        await asyncio.sleep(random.uniform(_min_delay_ms, _delay_ms) / 1000)
    if _fail_value is not None and message.value == _fail_value:
        raise RuntimeError(f"cannot handle {message.value!r}")
    key = (message.key or b"-").decode()
    os.write(_out, f"{_line(message)} {key} {message.value.decode(errors='replace')}\n".encode())


if os.environ.get("RECORDER_PAYLOAD") == "dict":

    @app.consume(*_topics, **_options)
    async def on_event(event: dict[str, Any], ctx: Context) -> None:
        assert ctx.message is not None
        await record(ctx.message)

else:
    app.add_consumer(record, *_topics, name="on_event", **_options)
