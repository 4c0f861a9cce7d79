"""A consumer whose record with the value ``bad`` misbehaves as ``MISBEHAVING_MODE`` says.

- ``MISBEHAVING_TOPIC``, ``MISBEHAVING_GROUP``: what it consumes, as which group;
- ``MISBEHAVING_MODE``: ``stuck-def`` (a `def` that never returns), ``stuck-async`` (an `async def`
  that swallows every cancellation), ``exit`` (``sys.exit(3)``), ``interrupt``
  (``KeyboardInterrupt``) or ``base`` (a custom `BaseException`);
- ``MISBEHAVING_DEAD_LETTER``: a dead-letter topic (with ``max_attempts=2``), optional.

Every record logs ``start <partition> <offset>`` when its handler starts, and every other record
``done <partition> <offset>`` when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading

from taskflow import App, Backoff, Context, Message

app = App("misbehaving")
log = logging.getLogger("misbehaving")
MODE = os.environ.get("MISBEHAVING_MODE", "stuck-def")
DEAD_LETTER = os.environ.get("MISBEHAVING_DEAD_LETTER") or None
options = {
    "group": os.environ.get("MISBEHAVING_GROUP", "misbehaving"),
    "dead_letter": DEAD_LETTER,
    "max_attempts": 2 if DEAD_LETTER else None,
    "retry": Backoff(initial=0.1, maximum=0.2, jitter=0.0),
}


class Poison(BaseException):
    """Not an Exception: what a careless library might raise."""


def _misbehave_in_thread() -> None:
    if MODE == "stuck-def":
        threading.Event().wait()  # forever
    elif MODE == "exit":
        sys.exit(3)
    elif MODE == "interrupt":
        raise KeyboardInterrupt
    elif MODE == "base":
        raise Poison("poisoned")


if MODE == "stuck-async":

    @app.consume(os.environ["MISBEHAVING_TOPIC"], name="misbehave", **options)  # type: ignore[arg-type]
    async def misbehave_async(message: Message, ctx: Context) -> None:
        log.info("start %d %d", message.partition, message.offset)
        if message.value == b"bad":
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    log.info("swallowed a cancellation")
        log.info("done %d %d", message.partition, message.offset)

else:

    @app.consume(os.environ["MISBEHAVING_TOPIC"], name="misbehave", **options)  # type: ignore[arg-type]
    def misbehave(message: Message) -> None:
        log.info("start %d %d", message.partition, message.offset)
        if message.value == b"bad":
            _misbehave_in_thread()
        log.info("done %d %d", message.partition, message.offset)
