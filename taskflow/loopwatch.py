"""Watching the event loop: noticing, while it happens, that something blocks it.

A handler that runs blocking code in an ``async def`` (``time.sleep``, a sync HTTP client, heavy
CPU) stops every other handler of the process, its commits, its heartbeats and its signal
handlers. A blocked loop cannot say so itself, so a `LoopWatch` has two halves:

- on the loop, a timer that notes the time every `interval` seconds (a *tick*), and how late it
  came (the loop's lag);
- in a thread, a look every `interval` at the last tick. Once it is `limit` seconds old the
  thread logs a WARNING at once, while the loop is still blocked, naming the handler call the loop
  is running (its worker and its record or tick) and the line of code it is on. When the loop
  ticks again, one more line says how long the block lasted.

Every `taskflow run` (and `taskflow.running`) watches its loop; the operations endpoint's
/healthz reads `problem`. The workers say which record each of their tasks is handling with
`handling`, once per run of records (not per record): the watch looks it up only when it reports.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections.abc import Hashable, Mapping
from typing import Any

__all__ = ["LoopWatch", "done", "handling"]

logger = logging.getLogger("taskflow.loop")

CHECK_INTERVAL = 0.1  # seconds between ticks, and between the thread's looks
BLOCK_LIMIT = 1.0  # a tick this late means the event loop is blocked
BLOCK_MEMORY = 10.0  # /healthz fails for this long after a block

# What each task of the loop is handling now: (worker, what its lanes run, its lane). The lane's
# entry in the mapping is the record (or tick) being handled, absent between records.
_handling: dict[asyncio.Task[Any], tuple[str, Mapping[Hashable, object], Hashable]] = {}


def handling(
    worker: str, running: Mapping[Hashable, object], lane: Hashable
) -> asyncio.Task[Any] | None:
    """Note that the current task handles `worker`'s records, found at `running[lane]`.

    Returns the task, for `done`.
    """
    task = asyncio.current_task()
    if task is not None:
        _handling[task] = (worker, running, lane)
    return task


def done(task: asyncio.Task[Any] | None) -> None:
    """Forget what `task` was noted to handle."""
    if task is not None:
        _handling.pop(task, None)


def _handler_call(loop: asyncio.AbstractEventLoop) -> str | None:
    """'handler on_order for orders[0]@5': what the loop's current task is handling, if known."""
    task = asyncio.current_task(loop)
    noted = _handling.get(task) if task is not None else None
    if noted is None:
        return None
    worker, running, lane = noted
    record = running.get(lane)
    return f"handler {worker}" + (f" for {record}" if record is not None else "")


def _code_line(thread_id: int | None) -> str | None:
    """'app.py:12 in on_order': where the loop's thread is, by its innermost Python frame."""
    frame = sys._current_frames().get(thread_id) if thread_id is not None else None
    if frame is None:
        return None
    code = frame.f_code
    try:
        path = os.path.relpath(code.co_filename)
    except ValueError:  # another drive, on Windows
        path = code.co_filename
    if path.startswith(".."):
        path = code.co_filename
    return f"{path}:{frame.f_lineno} in {code.co_name}"


class LoopWatch:
    """Watches one event loop from a thread; see the module docstring.

    Args:
        interval: Seconds between ticks (and between the thread's looks).
        limit: Seconds without a tick that count as a block.
        memory: Seconds for which `problem` reports a block that ended.
    """

    def __init__(
        self,
        *,
        interval: float = CHECK_INTERVAL,
        limit: float = BLOCK_LIMIT,
        memory: float = BLOCK_MEMORY,
    ) -> None:
        self.interval = interval
        self.limit = limit
        self.memory = memory
        self.lag = 0.0  # how late the last tick came, in seconds
        self.blocked: tuple[float, float] | None = None  # (when it ended, how long), monotonic
        self._last: float | None = None  # the last tick, time.monotonic()
        self._due: float | None = None  # when the next tick should come
        self._reported: float | None = None  # the last tick before the block reported
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start ticking on the running loop, and watching from a thread."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stopped.clear()
        self._tick()
        self._thread = threading.Thread(target=self._watch, name="taskflow-loop-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop ticking and watching (on the loop)."""
        self._stopped.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._thread is not None:
            self._thread.join(timeout=1.0)  # it wakes up every `interval`
            self._thread = None

    # -- on the loop -----------------------------------------------------------------------

    def _tick(self) -> None:
        assert self._loop is not None
        now = time.monotonic()
        if self._due is not None:
            self.note(now - self._due, now)
        self._last, self._due = now, now + self.interval
        self._timer = self._loop.call_later(self.interval, self._tick)

    def note(self, lag: float, now: float) -> None:
        """Record how late a tick came at `now` (monotonic)."""
        self.lag = max(lag, 0.0)
        if lag >= self.limit:
            self.blocked = (now, lag)
            logger.warning("the event loop was blocked for %.2fs", lag)

    # -- in the thread ---------------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stopped.wait(self.interval):
            self.check(time.monotonic())

    def check(self, now: float) -> None:
        """Log a block going on at `now` (monotonic), once per block."""
        last = self._last
        if last is None or now - last < self.limit or self._reported == last:
            return
        self._reported = last
        where = [
            part
            for part in (
                _handler_call(self._loop) if self._loop is not None else None,
                _code_line(self._loop_thread),
            )
            if part is not None
        ]
        logger.warning(
            "the event loop is blocked: no tick for %.1fs%s; blocking code in an async def "
            "stops every handler, commit and signal of this process",
            now - last,
            f", running {', at '.join(where)}" if where else "",
        )

    # -- what it says ----------------------------------------------------------------------

    def problem(self, now: float) -> str | None:
        """Why the loop is unhealthy at `now` (monotonic), or None."""
        # The timer may not have run yet after a block that just ended: its overdue tick tells
        # the same story.
        if self._due is not None and now - self._due >= self.limit:
            return f"the event loop was blocked for {now - self._due:.2f}s until just now"
        if self.blocked is not None:
            noticed, lag = self.blocked
            if now - noticed <= self.memory:
                return f"the event loop was blocked for {lag:.2f}s, {now - noticed:.1f}s ago"
        return None
