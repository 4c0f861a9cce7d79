"""Two `def` consumers: ``hang`` never returns (``timeout=1``), ``innocent`` records each message.

- ``STARVING_HANG_TOPIC``, ``STARVING_TOPIC``: their topics; groups are ``<topic>-group``;
- every record ``innocent`` handles logs ``handled <offset>``.
"""

from __future__ import annotations

import logging
import os
import threading

from taskflow import App, Backoff, Message

app = App("starving")
log = logging.getLogger("starving")
HANG = os.environ["STARVING_HANG_TOPIC"]
TOPIC = os.environ["STARVING_TOPIC"]


@app.consume(HANG, group=f"{HANG}-group", timeout=1, retry=Backoff(initial=0.1, jitter=0.0))
def hang(message: Message) -> None:
    threading.Event().wait()  # forever: only the process's end stops it


@app.consume(TOPIC, group=f"{TOPIC}-group")
def innocent(message: Message) -> None:
    log.info("handled %d", message.offset)
