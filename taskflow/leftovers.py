"""What a stopping process leaves behind: handler threads and tasks that would not end.

A thread cannot be cancelled, and a task that swallows `CancelledError` cannot be made to end.
Once the app has stopped, `name_leftovers` cancels the tasks still running besides the caller's,
gives them `grace` seconds, and logs one line for each task and each `def` handler call still
running. `taskflow run` then ends the process with `os._exit` rather than wait for them forever
(Python joins executor threads at exit); a program that runs an App itself decides on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time

from taskflow.context import Tick
from taskflow.threads import ThreadCall, abandoned_calls

__all__ = ["name_leftovers"]

logger = logging.getLogger("taskflow")

GIVEN_UP_MOMENT = 0.1  # what a task cancelled before may still take to end


async def name_leftovers(grace: float) -> int:
    """Cancel the other tasks, wait up to `grace`; log what still runs and return how much."""
    current = asyncio.current_task()
    running = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    # A task cancelled before (a handler's lane given up on by its worker, or one ending now)
    # had its chance: it gets a moment only. The others are cancelled now and get `grace`.
    fresh = [t for t in running if not t.cancelling()]
    for task in fresh:
        task.cancel()
    if fresh:
        await asyncio.wait(fresh, timeout=grace)
    if running:
        await asyncio.wait(running, timeout=GIVEN_UP_MOMENT)
    left = [t for t in running if not t.done()]
    for task in left:
        logger.error(
            "abandoned task %s (%s): it ignored cancellation", task.get_name(), _coro(task)
        )
    now = time.monotonic()
    calls = abandoned_calls()
    for call in calls:
        logger.error(
            "abandoned %s: it still runs in its thread after %.1fs, and a thread cannot be stopped",
            _call(call),
            now - call.started,
        )
    return len(left) + len(calls)


def _call(call: ThreadCall) -> str:
    if isinstance(call.job, Tick):
        return f"periodic task {call.worker} for tick {call.job.scheduled_at.isoformat()}"
    return f"handler {call.worker} for {call.job}"


def _coro(task: asyncio.Task[object]) -> str:
    coro = task.get_coro()
    return getattr(coro, "__qualname__", None) or repr(coro)
