"""An idempotent consumer that records every message it handles, for the Redis outage test.

Configured by environment variables:

- ``OUTAGE_TOPIC``: the topic (the group is the app name, ``outage``);
- ``OUTAGE_OUT``: the file each handled message is appended to, one line
  ``<pid> <partition> <offset> <unix time> <value>``, with one ``os.write`` on an ``O_APPEND``
  descriptor;
- ``TASKFLOW_REDIS_URL``: the Redis that keeps the claims (read by `App`);
- ``OUTAGE_ON_STORE_ERROR``: ``on_store_error=`` (default ``fail``, taskflow's default: while
  Redis is away nothing runs and nothing is committed); ``proceed`` shows the test can fail.
"""

from __future__ import annotations

import logging
import os
import time

from taskflow import App, Message

app = App("outage")
# A message deferred again is logged at DEBUG: the test reads why (store down, or claimed).
logging.getLogger(app.name).setLevel(logging.DEBUG)

_out = os.open(os.environ["OUTAGE_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)


@app.consume(
    os.environ["OUTAGE_TOPIC"],
    idempotent=True,
    on_store_error=os.environ.get("OUTAGE_ON_STORE_ERROR", "fail"),
)
async def record(message: Message) -> None:
    line = f"{os.getpid()} {message.partition} {message.offset} {time.time():.3f} "
    os.write(_out, f"{line}{message.value.decode(errors='replace')}\n".encode())
