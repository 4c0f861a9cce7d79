"""A periodic task ``misbehave`` misbehaving as ``MISBEHAVING_MODE`` says, beside ``steady``.

- ``MISBEHAVING_MODE``: ``stuck-def`` (a `def` that never returns), ``stuck-async`` (an
  `async def` that swallows every cancellation), ``exit`` (``sys.exit(4)`` in a `def`),
  ``interrupt`` (``KeyboardInterrupt`` in an `async def`) or ``base`` (a custom `BaseException`);
- ``MISBEHAVING_APP``: the app's name (so that runs sharing a Redis do not share claims).

Both run every second. ``misbehave`` logs ``start <tick>`` and, in the ``exit`` and ``interrupt``
modes, first waits until ``steady`` has begun a run, so that one is going when the process is
asked to stop. ``steady`` logs ``steady start <tick>``, takes a second, and logs
``steady done <tick>``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading

from taskflow import App, Context

app = App(os.environ.get("MISBEHAVING_APP", "misbehaving-periodic"))
log = logging.getLogger("misbehaving")
MODE = os.environ.get("MISBEHAVING_MODE", "stuck-def")
steady_running = threading.Event()


class Poison(BaseException):
    """Not an Exception: what a careless library might raise."""


@app.every(seconds=1)
async def steady(ctx: Context) -> None:
    assert ctx.scheduled_at is not None
    log.info("steady start %s", ctx.scheduled_at.isoformat())
    steady_running.set()
    await asyncio.sleep(1)
    log.info("steady done %s", ctx.scheduled_at.isoformat())


if MODE in ("stuck-async", "interrupt"):

    @app.every(seconds=1, name="misbehave")
    async def misbehave_async(ctx: Context) -> None:
        assert ctx.scheduled_at is not None
        log.info("start %s", ctx.scheduled_at.isoformat())
        if MODE == "interrupt":
            await asyncio.to_thread(steady_running.wait, 30)
            raise KeyboardInterrupt
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                log.info("swallowed a cancellation")

else:

    @app.every(seconds=1, name="misbehave")
    def misbehave(ctx: Context) -> None:
        assert ctx.scheduled_at is not None
        log.info("start %s", ctx.scheduled_at.isoformat())
        if MODE == "stuck-def":
            threading.Event().wait()  # forever
        elif MODE == "exit":
            steady_running.wait(30)
            sys.exit(4)
        elif MODE == "base":
            raise Poison("poisoned")
