"""Protocols a user plugs in, and the small enums shared across taskflow."""

from __future__ import annotations

import enum
from typing import Protocol, runtime_checkable

__all__ = ["Worker", "WorkerState"]


@runtime_checkable
class Worker(Protocol):
    """A long-running piece of background work that the Manager starts, watches and stops.

    `start` does the work and returns only when the worker is done: after `stop` was called, or on
    its own. If it raises, the Manager logs the traceback and calls `start` again after a backoff.
    `stop` asks the worker to finish soon; it should return quickly. If `start` has not returned
    by the shutdown deadline, its task is cancelled.

    Example:
        ```python
        class Heartbeat:
            name = "heartbeat"

            def __init__(self) -> None:
                self._stopping = asyncio.Event()

            async def start(self) -> None:
                while not self._stopping.is_set():
                    await send_heartbeat()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), timeout=5)

            async def stop(self) -> None:
                self._stopping.set()

        app.add_worker(Heartbeat())
        ```
    """

    @property
    def name(self) -> str:
        """A unique name among the app's workers."""
        ...

    async def start(self) -> None:
        """Run until done or stopped."""
        ...

    async def stop(self) -> None:
        """Ask `start` to finish."""
        ...


class WorkerState(enum.StrEnum):
    """Where a worker is in its life, as the Manager tracks it."""

    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"
    RESTARTING = "restarting"
