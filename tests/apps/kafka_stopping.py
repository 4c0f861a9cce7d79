"""A consumer whose handlers finish only when shutdown begins, for tests of a stop without a broker.

- ``STOPPING_TOPIC``: the topic it consumes, as group ``stopping``;
- ``STOPPING_STARTED``: a file where ``<partition> <offset>`` is appended when a handler starts.

Each handler waits for ``ctx.stopping``, so at a SIGTERM every fetched record is finished at once
and its offset is due for a commit: exactly what cannot be committed while the broker is down.
"""

from __future__ import annotations

import os

from taskflow import App, Context, Message

app = App("stopping")
_started = os.open(os.environ["STOPPING_STARTED"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


@app.consume(os.environ["STOPPING_TOPIC"])
async def hold_until_stopping(message: Message, ctx: Context) -> None:
    os.write(_started, f"{message.partition} {message.offset}\n".encode())
    await ctx.stopping.wait()
