"""A `def` periodic task ``hang`` that never returns (``timeout=1``), beside two that must go on.

- ``STARVING_TOPIC``: what the `def` consumer ``innocent`` consumes (group ``<topic>-group``); it
  logs ``handled <offset>`` for each record;
- the `def` periodic task ``ticker`` runs every half second and logs ``ticked <tick>``.
"""

from __future__ import annotations

import logging
import os
import threading

from taskflow import App, Context, Message

app = App("starving-periodic")
log = logging.getLogger("starving")
TOPIC = os.environ["STARVING_TOPIC"]


@app.every(seconds=1, timeout=1)
def hang(ctx: Context) -> None:
    threading.Event().wait()  # forever: only the process's end stops it


@app.every(seconds=0.5)
def ticker(ctx: Context) -> None:
    assert ctx.scheduled_at is not None
    log.info("ticked %s", ctx.scheduled_at.isoformat())


@app.consume(TOPIC, group=f"{TOPIC}-group")
def innocent(message: Message) -> None:
    log.info("handled %d", message.offset)
