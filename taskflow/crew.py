"""A `Crew` owns the tasks that run user code, like a TaskGroup that can give up on a task.

A TaskGroup waits, when it closes, for every task it owns to end. A handler that swallows
`CancelledError` never ends, and the TaskGroup around it would hold shutdown forever. A Crew
cancels its tasks when it closes and waits for them only `grace` seconds: the tasks still running
then are *abandoned* and returned, for the owner to name them. The first task that fails (raises
anything but a cancellation) is kept in `failure`, so the owner can raise it, as a TaskGroup would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["ABANDON_GRACE", "Crew"]

ABANDON_GRACE = 0.5
"""How long a cancelled handler may take to end before its worker gives up on it."""

T = TypeVar("T")


class Crew:
    """The tasks of one owner; `close` cancels them and gives up on the ones that do not end."""

    def __init__(self) -> None:
        self.tasks: set[asyncio.Task[Any]] = set()
        self.failure: BaseException | None = None
        self._failed = asyncio.Event()

    def create_task(
        self, coro: Coroutine[Any, Any, T], *, name: str | None = None
    ) -> asyncio.Task[T]:
        """Start `coro` as a task of this crew."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()  # retrieved here, so asyncio never reports it as lost
        if error is not None and self.failure is None:
            self.failure = error
            self._failed.set()

    async def failed(self) -> BaseException:
        """Wait until a task fails; return what it raised."""
        await self._failed.wait()
        assert self.failure is not None
        return self.failure

    async def close(self, grace: float) -> set[asyncio.Task[Any]]:
        """Cancel every task and wait up to `grace` seconds; return the tasks still running."""
        tasks = set(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        return {task for task in tasks if not task.done()}
