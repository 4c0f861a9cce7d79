"""The threads a plain `def` handler runs in: a bounded set per registration.

A thread cannot be cancelled. When the call waiting on a thread is cancelled (its `timeout=`
expired, or shutdown cut it off) the function goes on running and keeps its thread: the call is
*abandoned*. Each registration therefore has threads of its own, so one whose calls hang cannot
take the capacity of another, and at most `stuck_limit` of its abandoned calls may run at once:
past that its next call waits (`room`) until one of them returns.

Every `HandlerThreads` alive is known here, so that a process can name, when it exits, the
handler calls it leaves running (`abandoned_calls`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import threading
import time
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DEFAULT_THREADS", "HandlerThreads", "ThreadCall", "abandoned_calls"]

DEFAULT_THREADS = min(32, (os.cpu_count() or 1) + 4)
"""Threads of one registration: the size of asyncio's default pool, so one alone runs as before."""


@dataclass(slots=True, eq=False)
class ThreadCall:
    """One call of a `def` handler running in a thread now."""

    worker: str
    job: object  # the Message or Tick, for the log
    started: float  # time.monotonic()
    abandoned: bool = field(default=False)  # nobody waits for it any more


_ALL: weakref.WeakSet[HandlerThreads] = weakref.WeakSet()


class HandlerThreads:
    """The threads of one registration's `def` handler.

    Args:
        name: Names the threads (``taskflow-<name>``).
        size: Threads at most.
        stuck_limit: Abandoned calls that may still run before the next call waits; set to the
            registration's `concurrency` when the workers are built.
    """

    def __init__(self, name: str, *, size: int = DEFAULT_THREADS, stuck_limit: int = 1) -> None:
        self.name = name
        self.size = size
        self.stuck_limit = stuck_limit
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._calls: set[ThreadCall] = set()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        _ALL.add(self)

    # -- what runs -------------------------------------------------------------------------

    @property
    def calls(self) -> list[ThreadCall]:
        """The calls running in a thread now (safe from any thread)."""
        with self._lock:
            return list(self._calls)

    @property
    def stuck(self) -> list[ThreadCall]:
        """The abandoned calls still running, oldest first."""
        return sorted((c for c in self.calls if c.abandoned), key=lambda c: c.started)

    @property
    def blocked(self) -> bool:
        """True while the next call has to wait for an abandoned one to end."""
        return len(self.stuck) >= max(self.stuck_limit, 1)

    # -- running ---------------------------------------------------------------------------

    async def room(self) -> None:
        """Wait while this registration's abandoned calls take all the room it has for them."""
        loop = asyncio.get_running_loop()
        while self.blocked:
            waiter: asyncio.Future[None] = loop.create_future()
            with self._lock:
                self._waiters.append((loop, waiter))
            try:
                await waiter
            finally:
                with self._lock:
                    self._waiters = [w for w in self._waiters if w[1] is not waiter]

    async def run(self, worker: str, job: object, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(*args)`` in one of the threads; a cancellation abandons it if it started."""
        call = ThreadCall(worker, job, time.monotonic())
        context = contextvars.copy_context()
        future = self._pool().submit(self._call, call, context, func, *args)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if not future.cancel():  # it runs: a thread cannot be stopped
                call.abandoned = True
            raise

    def _call(
        self, call: ThreadCall, context: contextvars.Context, func: Callable[..., Any], *args: Any
    ) -> Any:
        with self._lock:
            self._calls.add(call)
        try:
            return context.run(func, *args)
        finally:
            with self._lock:
                self._calls.discard(call)
                waiters, self._waiters = self._waiters, []
            for loop, waiter in waiters:
                _wake(loop, waiter)

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                self.size, thread_name_prefix=f"taskflow-{self.name}"
            )
        return self._executor


def _wake(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[None]) -> None:
    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
        loop.call_soon_threadsafe(wake)


def abandoned_calls() -> list[ThreadCall]:
    """Every handler call still running in a thread, in every registration, oldest first."""
    calls = [call for threads in list(_ALL) for call in threads.calls]
    return sorted(calls, key=lambda c: c.started)
