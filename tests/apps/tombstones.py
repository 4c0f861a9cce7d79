"""Three consumers of one topic, each in a group of its own, for the real-broker tombstone test.

- ``raw`` takes the `Message`; ``optional`` a ``dict | None``; ``strict`` a ``dict``, with a
  dead-letter topic it must never use for a tombstone.
- ``TOMBSTONES_TOPIC``: the topic; ``TOMBSTONES_OUT``: the file each handler appends
  ``<handler> <partition> <offset> <value>`` to, the value ``None`` for a tombstone.

Lines are written with one ``os.write`` on an ``O_APPEND`` descriptor.
"""

from __future__ import annotations

import json
import os
from typing import Any

from taskflow import App, Context, Message

app = App("tombstones")

_topic = os.environ["TOMBSTONES_TOPIC"]
_out = os.open(os.environ["TOMBSTONES_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def _write(handler: str, message: Message, shown: str) -> None:
    os.write(_out, f"{handler} {message.partition} {message.offset} {shown}\n".encode())


def _json(value: dict[str, Any] | None) -> str:
    return "None" if value is None else json.dumps(value, separators=(",", ":"))


@app.consume(_topic, group=f"{_topic}-raw")
async def raw(message: Message) -> None:
    _write("raw", message, "None" if message.value is None else repr(message.value))


@app.consume(_topic, group=f"{_topic}-optional")
async def optional(order: dict[str, Any] | None, ctx: Context) -> None:
    assert ctx.message is not None
    _write("optional", ctx.message, _json(order))


@app.consume(_topic, group=f"{_topic}-strict", dead_letter=f"{_topic}.DLQ")
async def strict(order: dict[str, Any], ctx: Context) -> None:
    assert ctx.message is not None
    _write("strict", ctx.message, _json(order))
