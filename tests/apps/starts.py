"""Two consumers of one topic, each in a group of its own, for the real-broker `start=` test.

- ``replay`` starts where taskflow starts by default (earliest), with consumer options of its
  own; ``live`` passes ``start="latest"``.
- ``STARTS_TOPIC``: the topic; ``STARTS_OUT``: the file each handler appends
  ``<handler> <partition> <offset>`` to.
"""

from __future__ import annotations

import os

from taskflow import App, Message

app = App("starts")

_topic = os.environ["STARTS_TOPIC"]
_out = os.open(os.environ["STARTS_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


def _write(handler: str, message: Message) -> None:
    os.write(_out, f"{handler} {message.partition} {message.offset}\n".encode())


@app.consume(
    _topic,
    group=f"{_topic}-replay",
    consumer_options={"isolation_level": "read_committed", "max_partition_fetch_bytes": 65536},
)
async def replay(message: Message) -> None:
    _write("replay", message)


@app.consume(_topic, group=f"{_topic}-live", start="latest")
async def live(message: Message) -> None:
    _write("live", message)
