"""Idempotency: a message (or a periodic tick) runs its handler to completion at most once.

Before the handler runs, the middleware *claims* the message's key in the store with an owner
token and a lease. Then, by what the claim found:

- ``DONE``: the message was handled before. The handler is skipped and the message is finished,
  so its offset is committed.
- ``IN_PROGRESS``: another worker (another replica, after a rebalance) holds the claim. `Defer`
  is raised: the message is not committed, and is tried again when that lease runs out.
- ``CLAIMED``: the handler runs while a renewal task extends the lease every third of it. On
  success the claim becomes a done mark kept for the retention; on failure it is released and the
  handler's exception goes on to the error policy, so the retry can claim it again.

A periodic task keys on its name and scheduled tick; a tick done or in progress elsewhere is
skipped (there is no redelivery to wait for).

When the store fails, ``on_store_error="fail"`` (the default) raises `Defer` for a message (not
run, not committed, tried again after `STORE_RETRY` seconds: nothing is lost) and `StoreError` for
a periodic run (not run; logged as failed); ``"proceed"`` runs the handler unguarded and logs it.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import socket
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING

from taskflow.context import Tick
from taskflow.exceptions import Defer, StoreError
from taskflow.message import Message
from taskflow.specs import ConsumerSpec
from taskflow.stores.base import Outcome
from taskflow.stores.redis import RedisIdempotencyStore

if TYPE_CHECKING:
    from taskflow.context import Context
    from taskflow.handler import Handler, Job
    from taskflow.middleware.builtin import Resources
    from taskflow.specs import IdempotencyKey, MiddlewareFactory, OnStoreError, ScheduleSpec
    from taskflow.stores.base import IdempotencyStore

__all__ = [
    "HEADER",
    "STORE_RETRY",
    "Idempotency",
    "consumer_key",
    "idempotency_layer",
    "periodic_key",
]

logger = logging.getLogger("taskflow.idempotency")

HEADER = "idempotency-key"
"""The header whose value is a message's key when no `idempotency_key=` function gives one."""

STORE_RETRY = 1.0
"""Seconds before a message deferred by a store failure is tried again."""

DEFER_POLL = 1.0
"""The longest a message claimed elsewhere waits before asking again: a holder that finishes
early hands over within this, not at the end of its lease."""

_MAX_UNANSWERED = 10_000
_MIN_DEFER = 0.01  # a claim about to expire: look again almost at once, without spinning
# Owner tokens: unique per claim across replicas and restarts, and readable in Redis.
_PROCESS = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
_claims = itertools.count()


def new_owner() -> str:
    """A fresh owner token: host, pid, a random process tag and a counter."""
    return f"{_PROCESS}:{next(_claims)}"


def consumer_key(group: str, key: IdempotencyKey | None = None) -> Callable[[Job], str]:
    """The store key of a consumed message: always scoped by consumer group.

    The identity is `key(message)` when that gives one, else the `idempotency-key` header, else
    ``topic:partition:offset``; the store key is ``taskflow:idem:{group}:{identity}``.
    """
    prefix = f"taskflow:idem:{group}:"

    def key_for(job: Job) -> str:
        assert isinstance(job, Message), "a consumer's job is a Message"
        ident = key(job) if key is not None else None
        if not ident:
            ident = job.header(HEADER)
        if not ident:
            return f"{prefix}{job.topic}:{job.partition}:{job.offset}"
        if isinstance(ident, bytes):
            return prefix + ident.decode("utf-8", "backslashreplace")
        if isinstance(ident, str):
            return prefix + ident
        raise TypeError(f"idempotency_key returned {type(ident).__name__}, not str or bytes")

    return key_for


def periodic_key(app_name: str) -> Callable[[Job], str]:
    """The store key of a periodic run: ``taskflow:idem:{app}:{task}:{scheduled tick, ISO}``."""

    def key_for(job: Job) -> str:
        assert isinstance(job, Tick), "a periodic task's job is a Tick"
        return f"taskflow:idem:{app_name}:{job.task}:{job.scheduled_at.isoformat()}"

    return key_for


def idempotency_layer(spec: ConsumerSpec | ScheduleSpec, resources: Resources) -> MiddlewareFactory:
    """The idempotency middleware factory for `spec`, on its explicit store or on Redis."""
    store = spec.idempotency_store
    if store is None:
        assert resources.redis is not None, "layers_for refuses idempotency without a store"
        store = RedisIdempotencyStore(resources.redis)
    if isinstance(spec, ConsumerSpec):
        key_for = consumer_key(spec.group, spec.idempotency_key)
    else:
        key_for = periodic_key(resources.app_name)
    return functools.partial(
        Idempotency,
        store=store,
        key_for=key_for,
        lease=spec.idempotency_lease,
        retention=spec.idempotency_retention,
        on_store_error=spec.on_store_error,
        periodic=not isinstance(spec, ConsumerSpec),
        name=spec.name,
    )


class Idempotency:
    """Claims each job's key before its handler runs; see the module docstring.

    Args:
        app: The next handler.
        store: Where claims live.
        key_for: The store key of a job.
        lease: Seconds a claim lasts unless renewed.
        retention: Seconds a done mark is kept.
        on_store_error: ``"fail"`` (do not run) or ``"proceed"`` (run unguarded).
        periodic: True for a periodic task: a tick done or in progress elsewhere is skipped.
        name: The registration's name, for log lines.

    Attributes:
        runs: Handlers run under a claim and completed.
        skipped: Jobs found done (or, periodic, in progress elsewhere) and not run.
        deferred: Messages deferred because another worker held their claim.
        unguarded: Handlers run without a claim because the store failed (``"proceed"``).
        lost: Claims found lost (lease ran out) while renewing or completing.
    """

    def __init__(
        self,
        app: Handler,
        *,
        store: IdempotencyStore,
        key_for: Callable[[Job], str],
        lease: float,
        retention: float,
        on_store_error: OnStoreError = "fail",
        periodic: bool = False,
        name: str = "",
    ) -> None:
        self.app = app
        self.store = store
        self.key_for = key_for
        self.lease = lease
        self.retention = retention
        self.on_store_error = on_store_error
        self.periodic = periodic
        self.name = name
        self.runs = self.skipped = self.deferred = self.unguarded = self.lost = 0
        self.failing = False
        self._unanswered: dict[str, str] = {}  # key -> the owner of a claim that got no answer

    def _remember_unanswered(self, key: str, owner: str) -> None:
        self._unanswered[key] = owner
        if len(self._unanswered) > _MAX_UNANSWERED:  # keys of revoked partitions never return
            del self._unanswered[next(iter(self._unanswered))]

    async def __call__(self, job: Job, ctx: Context) -> None:
        key = self.key_for(job)
        # After a failed claim, try again as the same owner: the claim may have reached Redis
        # even though its answer did not, and then only that owner can take it back.
        owner = self._unanswered.pop(key, None) or new_owner()
        try:
            outcome = await self.store.claim(key, owner, self.lease)
        except StoreError as exc:
            self._remember_unanswered(key, owner)
            await self._without_store(job, ctx, exc)
            return
        self._store_answers()
        if outcome is Outcome.CLAIMED:
            await self._run_claimed(job, ctx, key, owner)
        elif outcome is Outcome.DONE:
            self.skipped += 1
            ctx.logger.info("⏭ %s already done (%s); skipped", job, key)
        elif self.periodic:
            self.skipped += 1
            ctx.logger.info("⏭ %s is running elsewhere (%s); skipped", job, key)
        else:
            self.deferred += 1
            raise Defer(f"claimed by another worker ({key})", await self._lease_left(key))

    async def _run_claimed(self, job: Job, ctx: Context, key: str, owner: str) -> None:
        renewal = asyncio.create_task(self._renew(job, ctx, key, owner), name=f"renew {key}")
        try:
            await self.app(job, ctx)
        except BaseException:
            await _cancel(renewal)
            await self._release(job, ctx, key, owner)
            raise
        await _cancel(renewal)
        await self._complete(job, ctx, key, owner)
        self.runs += 1

    async def _renew(self, job: Job, ctx: Context, key: str, owner: str) -> None:
        """Extend the lease every third of it until cancelled, or until the claim is lost."""
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                kept = await self.store.extend(key, owner, self.lease)
            except StoreError as exc:
                ctx.logger.warning("renewing the claim on %s failed (%s); trying again", job, exc)
                continue
            if not kept:
                self.lost += 1
                # The handler is not cancelled: stopping it half-way could do more harm than a
                # second run, which the next owner's done mark then keeps from happening again.
                ctx.logger.error(
                    "lost the claim on %s (%s): its lease ran out, so another worker may run it "
                    "too; the handler goes on",
                    job,
                    key,
                )
                return

    async def _complete(self, job: Job, ctx: Context, key: str, owner: str) -> None:
        try:
            done = await self.store.complete(key, owner, self.retention)
        except StoreError as exc:
            ctx.logger.error(
                "%s ran but could not be marked done (%s); a duplicate after the lease may run it "
                "again",
                job,
                exc,
            )
            return
        if not done:
            self.lost += 1
            ctx.logger.error(
                "%s ran, but its claim (%s) had been lost: another worker may have run it too",
                job,
                key,
            )

    async def _release(self, job: Job, ctx: Context, key: str, owner: str) -> None:
        try:
            await self.store.release(key, owner)
        except StoreError as exc:
            ctx.logger.warning(
                "releasing the claim on %s failed (%s); it can be claimed again after the lease",
                job,
                exc,
            )

    async def _lease_left(self, key: str) -> float:
        try:
            left = await self.store.remaining(key)
        except StoreError:
            return self.lease
        return max(_MIN_DEFER, min(left, self.lease, DEFER_POLL))

    async def _without_store(self, job: Job, ctx: Context, exc: StoreError) -> None:
        """The claim failed: run unguarded ("proceed"), or do not run at all ("fail")."""
        if not self.failing:
            self.failing = True
            action = (
                "handlers run without it"
                if self.on_store_error == "proceed"
                else "nothing runs until it answers"
            )
            logger.error(
                "%s: the idempotency store is unavailable (%s); %s", self.name, exc, action
            )
        if self.on_store_error == "proceed":
            self.unguarded += 1
            ctx.logger.warning("%s runs without an idempotency claim: %s", job, exc)
            await self.app(job, ctx)
            return
        if self.periodic:
            raise StoreError(f"{job} not run: the idempotency store is unavailable ({exc})")
        raise Defer(f"idempotency store unavailable: {exc}", STORE_RETRY) from exc

    def _store_answers(self) -> None:
        if self.failing:
            self.failing = False
            logger.info("%s: the idempotency store answers again", self.name)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
