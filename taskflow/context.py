"""The Context a handler may ask for: the app, its state, a logger, publish, and what is running."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar, overload

from taskflow.exceptions import StateError
from taskflow.message import Message

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from redis.asyncio.client import Pipeline

    from taskflow.app import App, State
    from taskflow.topic import Topic
    from taskflow.types import Codec

__all__ = ["Context", "Tick", "WorkerLogger"]

T = TypeVar("T")


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

    def __init__(
        self, logger: logging.Logger, worker: str, job: Message | Tick | None = None
    ) -> None:
        super().__init__(logger, {"worker": worker})
        self.worker = worker
        self.tags: dict[str, Any] = {"worker": worker}
        if job is not None:  # JSON logs then carry its topic, partition and offset (or tick)
            self.tags["taskflow_job"] = job

    def bind(self, job: Message | Tick | None) -> WorkerLogger:
        """This logger, also tagging each record with the message or tick being handled."""
        return WorkerLogger(self.logger, self.worker, job) if job is not None else self

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = kwargs.get("extra")
        kwargs["extra"] = {**self.tags, **extra} if extra else self.tags
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
            [Defer][taskflow.Defer] does not count). With retry topics it counts across the
            stages: 1 in the consumer, 2 in the first retry stage, and so on.

    Example:
        ```python
        @app.consume("orders")
        async def on_order(order: dict, ctx: Context) -> None:
            await ctx.state.db.save(order)
            await ctx.publish("invoices", {"order": order["id"]}, key=order["customer"])
        ```
    """

    __slots__ = (
        "_bound_logger",
        "_logger",
        "_open_transaction",
        "_transaction",
        "app",
        "attempt",
        "message",
        "stopping",
        "tick",
        "worker",
    )

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
        self._logger = logger
        self._bound_logger: WorkerLogger | None = None
        self.stopping = stopping
        self.message = message
        self.attempt = attempt
        self.tick = tick
        self._open_transaction: Callable[[], Pipeline] | None = None
        self._transaction: Pipeline | None = None

    @property
    def logger(self) -> WorkerLogger:
        """A logger bound to the worker and to the message or tick being handled."""
        if self._bound_logger is None:
            self._bound_logger = self._logger.bind(self.message or self.tick)
        return self._bound_logger

    @property
    def state(self) -> State:
        """Resources opened at startup (`app.state`)."""
        return self.app.state

    @property
    def scheduled_at(self) -> datetime | None:
        """For a periodic task, the grid time of this run; else None."""
        return self.tick.scheduled_at if self.tick else None

    @property
    def transaction(self) -> Pipeline:
        """Redis commands written together with this message's done mark, or not at all.

        With ``idempotent=True`` on the Redis store, the commands a handler queues here (without
        awaiting them) are applied in one MULTI/EXEC with the message's done mark, after the
        handler returns, and only if this worker still holds the message's claim. A handler that
        raises, or whose claim was lost, applies none of them. So an effect kept in the same
        Redis happens exactly once, even across crashes and rebalances.

        Example:
            ```python
            @app.consume("payments", idempotent=True)
            async def on_payment(payment: dict, ctx: Context) -> None:
                ctx.transaction.hincrby("balances", payment["account"], payment["amount"])
            ```

        Raises:
            StateError: when the handler does not run under an idempotency claim on Redis.
        """
        if self._transaction is None:
            if self._open_transaction is None:
                raise StateError(
                    f"{self.worker}: ctx.transaction needs idempotent=True with the Redis "
                    "idempotency store (App(redis_url=...)); it is the claim that makes its "
                    "commands apply once"
                )
            self._transaction = self._open_transaction()
        return self._transaction

    def _offer_transaction(self, open_transaction: Callable[[], Pipeline]) -> None:
        """Let the handler open `transaction` (called by the idempotency middleware)."""
        self._open_transaction = open_transaction

    def _take_transaction(self) -> Pipeline | None:
        """The transaction the handler opened, if it did; it cannot be opened again after."""
        transaction, self._transaction = self._transaction, None
        self._open_transaction = None
        return transaction

    @overload
    async def publish(
        self,
        topic: Topic[T],
        value: T | None,
        *,
        key: bytes | str | None = None,
        headers: Mapping[str, str | bytes] | Sequence[tuple[str, bytes]] | None = None,
        wait: bool = True,
        codec: Codec | None = None,
    ) -> None: ...
    @overload
    async def publish(
        self,
        topic: str,
        value: Any,
        *,
        key: bytes | str | None = None,
        headers: Mapping[str, str | bytes] | Sequence[tuple[str, bytes]] | None = None,
        wait: bool = True,
        codec: Codec | None = None,
    ) -> None: ...
    async def publish(
        self,
        topic: str | Topic[Any],
        value: Any,
        *,
        key: bytes | str | None = None,
        headers: Mapping[str, str | bytes] | Sequence[tuple[str, bytes]] | None = None,
        wait: bool = True,
        codec: Codec | None = None,
    ) -> None:
        """Publish a message through the app's broker; see `App.publish`. `topic` is a name,
        or a `Topic` declared with `App.topic` (the value is then checked against its payload
        type, by mypy and at run time).

        With `wait=False` it returns once the message is queued, and a message the broker does
        not take is logged and counted rather than raised in the handler.
        """
        await self.app.publish(topic, value, key=key, headers=headers, wait=wait, codec=codec)
