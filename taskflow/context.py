"""The Context a handler may ask for: the app, its state, a logger, publish, and what is running."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from taskflow.message import Message

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from taskflow.app import App, State

__all__ = ["Context", "Tick", "WorkerLogger"]


@dataclass(frozen=True, slots=True)
class Tick:
    """One scheduled run of a periodic task: what a periodic handler's middleware receives.

    Attributes:
        task: The periodic task's name.
        scheduled_at: The grid time this run belongs to (UTC), before any jitter.
    """

    task: str
    scheduled_at: datetime

    def __str__(self) -> str:
        return f"{self.task}@{self.scheduled_at.isoformat()}"


class WorkerLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger that tags each record with its worker (`record.worker`) and prefixes the text."""

    def __init__(self, logger: logging.Logger, worker: str) -> None:
        super().__init__(logger, {"worker": worker})
        self.worker = worker

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = kwargs.get("extra")
        kwargs["extra"] = {"worker": self.worker, **extra} if extra else {"worker": self.worker}
        return msg, kwargs


class Context:
    """What a running handler can reach, passed as the parameter annotated `Context`.

    Attributes:
        app: The running App.
        worker: The worker's name (the handler's name unless `name=` was given).
        logger: A logger bound to the worker.
        message: The message being handled (consumers), else None.
        tick: The scheduled run (periodic tasks), else None.
        stopping: Set when shutdown begins; long handlers may watch it to finish early.
        attempt: Which attempt at the message this is: 1, then 2 after a failure, and so on (a
            `Defer` does not count).

    Example:
        ```python
        @app.consume("orders")
        async def on_order(order: dict, ctx: Context) -> None:
            await ctx.state.db.save(order)
            await ctx.publish("invoices", {"order": order["id"]}, key=order["customer"])
        ```
    """

    __slots__ = ("app", "attempt", "logger", "message", "stopping", "tick", "worker")

    def __init__(
        self,
        app: App,
        worker: str,
        logger: WorkerLogger,
        stopping: asyncio.Event,
        *,
        message: Message | None = None,
        tick: Tick | None = None,
        attempt: int = 1,
    ) -> None:
        self.app = app
        self.worker = worker
        self.logger = logger
        self.stopping = stopping
        self.message = message
        self.attempt = attempt
        self.tick = tick

    @property
    def state(self) -> State:
        """Resources opened at startup (`app.state`)."""
        return self.app.state

    @property
    def scheduled_at(self) -> datetime | None:
        """For a periodic task, the grid time of this run; else None."""
        return self.tick.scheduled_at if self.tick else None

    async def publish(
        self,
        topic: str,
        value: Any,
        *,
        key: bytes | str | None = None,
        headers: Mapping[str, str | bytes] | Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Publish a message through the app's broker; see `App.publish`."""
        await self.app.publish(topic, value, key=key, headers=headers)
