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

A batch (`taskflow.batch.Batch`, a batch consumer's job) is checked record by record, with the
claims of its explicit keys made in one call: records found done are left out of the batch the
handler gets; a record claimed elsewhere, or a partition another consumer holds, defers the whole
batch. When the handler succeeds every record it got is marked done; when it raises `BatchError`,
the records before the failed one are, and the index is translated to the batch the worker formed.
`ctx.transaction` is not offered to a batch.

A periodic task keys on its name and scheduled tick; a tick done or in progress elsewhere is
skipped (there is no redelivery to wait for).

When the store fails, ``on_store_error="fail"`` (the default) raises `Defer` for a message (not
run, not committed, tried again after `STORE_RETRY` seconds: nothing is lost) and `StoreError` for
a periodic run (not run; logged as failed); ``"proceed"`` runs the handler unguarded and logs it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Collection, Sequence
from typing import TYPE_CHECKING, NamedTuple, cast

from taskflow.batch import Batch
from taskflow.context import Tick
from taskflow.exceptions import BatchError, Defer, StoreError
from taskflow.message import Message, TopicPartition
from taskflow.middleware.offsets import LINGER, FinishedBelow, OffsetClaims
from taskflow.retry_topics import original
from taskflow.specs import ConsumerSpec
from taskflow.stores import keys
from taskflow.stores.base import ClaimOutcome, TransactionalStore
from taskflow.stores.health import StoreHealth
from taskflow.stores.lease import keep, new_owner
from taskflow.stores.ledger import OffsetLedger, TransactionalLedger
from taskflow.telemetry.metrics import idempotency_outcomes

if TYPE_CHECKING:
    from opentelemetry.metrics import Counter
    from redis.asyncio.client import Pipeline

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

FLUSH_TIMEOUT = 5.0
"""The longest a revoke or shutdown waits for done marks still on their way to the store."""

_ATTRIBUTE = {
    "ran": "runs",
    "skipped": "skipped",
    "deferred": "deferred",
    "unguarded": "unguarded",
    "lost": "lost",
}
_MAX_UNANSWERED = 10_000
_MIN_DEFER = 0.01  # a claim about to expire: look again almost at once, without spinning


def consumer_key(
    group: str,
    key: IdempotencyKey | None = None,
    *,
    by_offset: bool = False,
    retried: bool = False,
) -> Callable[[Job], str | None]:
    """The store key of a consumed message: always scoped by consumer group.

    The identity is `key(message)` when that gives one, else the `idempotency-key` header; the
    store key is ``taskflow:{group}:idem:<identity>`` (`taskflow.stores.keys`). A message with
    neither is known by its offset: None when `by_offset` (the store's offset ledger answers
    for it), else the key of identity ``topic:partition:offset``.

    With `retried` (a retry stage), each message stands for its original
    (`taskflow.retry_topics.original`): `key` gets the original, and a message with no explicit
    identity is known by the original's ``topic:partition:offset``, never by its place on the
    retry topic, so every stage of one record shares one key.
    """
    prefix = keys.idempotency(group, "")

    def key_for(job: Job) -> str | None:
        assert isinstance(job, Message), "a consumer's job is a Message"
        if retried:
            job = original(job)
        ident = key(job) if key is not None else None
        if not ident:
            ident = job.header(HEADER)
        if not ident:
            return None if by_offset else f"{prefix}{job.topic}:{job.partition}:{job.offset}"
        if isinstance(ident, bytes):
            return prefix + ident.decode("utf-8", "backslashreplace")
        if isinstance(ident, str):
            return prefix + ident
        raise TypeError(f"idempotency_key returned {type(ident).__name__}, not str or bytes")

    return key_for


def periodic_key(app_name: str) -> Callable[[Job], str | None]:
    """The store key of a periodic run: ``taskflow:{app:task}:idem:<scheduled tick, ISO>``."""

    def key_for(job: Job) -> str:
        assert isinstance(job, Tick), "a periodic task's job is a Tick"
        return keys.tick_idempotency(app_name, job.task, job.scheduled_at.isoformat())

    return key_for


def idempotency_layer(spec: ConsumerSpec | ScheduleSpec, resources: Resources) -> MiddlewareFactory:
    """The idempotency middleware factory for `spec`, on the run's idempotency store."""
    store = resources.stores.idempotency
    assert store is not None, "layers_for refuses idempotency without a store"
    offsets = None
    if isinstance(spec, ConsumerSpec):
        ledger = getattr(store, "ledger", None)
        if isinstance(ledger, OffsetLedger):
            offsets = functools.partial(
                OffsetClaims,
                ledger,
                spec.group,
                lease=spec.idempotency_lease,
                retention=spec.idempotency_retention,
                name=spec.name,
            )
        if spec.retrying:  # known by the original record's identity, never by a ledger here
            offsets = None
        key_for = consumer_key(
            spec.group,
            spec.idempotency_key,
            by_offset=offsets is not None,
            retried=spec.retrying,
        )
    else:
        key_for = periodic_key(resources.app_name)
    return functools.partial(
        Idempotency,
        outcomes=idempotency_outcomes(resources),
        store=store,
        key_for=key_for,
        lease=spec.idempotency_lease,
        retention=spec.idempotency_retention,
        on_store_error=spec.on_store_error,
        periodic=not isinstance(spec, ConsumerSpec),
        name=spec.name,
        offsets=offsets,
    )


class Idempotency:
    """Claims each job's key before its handler runs; see the module docstring.

    Args:
        next: The next handler.
        store: Where claims live.
        key_for: The store key of a job.
        lease: Seconds a claim lasts unless renewed.
        retention: Seconds a done mark is kept.
        on_store_error: ``"fail"`` (do not run) or ``"proceed"`` (run unguarded).
        periodic: True for a periodic task: a tick done or in progress elsewhere is skipped, and
            done marks are written before the run ends (there are no batches to share them).
        name: The registration's name, for log lines.
        outcomes: The counter `taskflow.idempotency.outcomes`, when telemetry is on.
        offsets: Builds the consumer's `OffsetClaims` (given `on_lost`), when messages without
            an explicit key are known by their offset in the store's ledger.

    Attributes:
        runs: Handlers run under a claim and completed.
        skipped: Jobs found done (or, periodic, in progress elsewhere) and not run.
        deferred: Messages deferred because another worker held their claim.
        unguarded: Handlers run without a claim because the store failed (``"proceed"``).
        lost: Claims found lost (lease ran out) while renewing or completing.
    """

    def __init__(
        self,
        next: Handler,
        *,
        store: IdempotencyStore,
        key_for: Callable[[Job], str | None],
        lease: float,
        retention: float,
        on_store_error: OnStoreError = "fail",
        periodic: bool = False,
        name: str = "",
        outcomes: Counter | None = None,
        offsets: Callable[..., OffsetClaims] | None = None,
    ) -> None:
        self.next = next
        self.outcomes = outcomes
        self.store = store
        self.key_for = key_for
        self.lease = lease
        self.retention = retention
        self.on_store_error = on_store_error
        self.periodic = periodic
        self.name = name
        self.runs = self.skipped = self.deferred = self.unguarded = self.lost = 0
        self.health = StoreHealth(logger)
        self.transactional = isinstance(store, TransactionalStore)
        self._unanswered: dict[str, str] = {}  # key -> the owner of a claim that got no answer
        self._prefetched: dict[str, _Prefetched] = {}
        self._marks = _DoneMarks(self)
        self.offsets = offsets(on_lost=self._lost_offsets) if offsets is not None else None
        self.transactional_offsets = self.offsets is not None and isinstance(
            self.offsets.ledger, TransactionalLedger
        )

    def _note(self, outcome: str) -> None:
        """Count an outcome: in the attribute of its name, and in the metric when there is one."""
        attribute = _ATTRIBUTE[outcome]
        setattr(self, attribute, getattr(self, attribute) + 1)
        if self.outcomes is not None:
            self.outcomes.add(
                1, {"taskflow.worker": self.name, "taskflow.idempotency.outcome": outcome}
            )

    def _remember_unanswered(self, key: str, owner: str) -> None:
        self._unanswered[key] = owner
        if len(self._unanswered) > _MAX_UNANSWERED:  # keys of revoked partitions never return
            del self._unanswered[next(iter(self._unanswered))]

    # -- one job ---------------------------------------------------------------------------

    async def __call__(self, job: Job, ctx: Context) -> None:
        if isinstance(job, Batch):
            await self._batch(job, ctx)
            return
        key = self.key_for(job)
        if key is None:
            await self._by_offset(cast("Message", job), ctx)
            return
        if key in self._marks:  # it ran here a moment ago; its done mark is on its way
            self._skip(job, ctx, key, "already done")
            return
        prefetched = self._prefetched.pop(key, None) if self._prefetched else None
        try:
            if prefetched is None:
                owner, outcome, claimed_at = await self._claim(key)
            else:
                owner, outcome, claimed_at = await self._reuse(key, prefetched)
        except _Unanswered as unanswered:
            await self._without_store(job, ctx, unanswered.error)
            return
        if outcome is ClaimOutcome.CLAIMED:
            await self._run_claimed(job, ctx, key, owner, claimed_at)
        elif outcome is ClaimOutcome.DONE:
            self._skip(job, ctx, key, "already done")
        elif self.periodic:
            self._skip(job, ctx, key, "is running elsewhere")
        else:
            self._note("deferred")
            raise Defer(f"claimed by another worker ({key})", await self._lease_left(key))

    async def _by_offset(self, message: Message, ctx: Context) -> None:
        """Run `message` unless its partition's ledger says it is finished."""
        offsets = cast("OffsetClaims", self.offsets)
        try:
            state = await offsets.state(message)
        except StoreError as exc:
            await self._without_store(message, ctx, exc)
            return
        self._store_answers()
        if state.held:
            self._note("deferred")
            where = f"{message.topic}[{message.partition}]"
            raise Defer(f"{where} is held by another consumer", min(state.held_for, DEFER_POLL))
        if state.done(message.offset):
            self._skip(message, ctx, f"{message.topic}[{message.partition}]", "already done")
            return
        if self.transactional_offsets:
            ctx._offer_transaction(cast("TransactionalLedger", offsets.ledger).transaction)
        try:
            await self.next(message, ctx)
        except BaseException:
            ctx._take_transaction()  # its effects are dropped with the failure
            raise
        effects = ctx._take_transaction() if self.transactional_offsets else None
        if effects is None:
            offsets.finished(message)
        else:
            await self._record_with(message, ctx, offsets, effects)
        self._note("ran")

    async def _record_with(
        self, message: Message, ctx: Context, offsets: OffsetClaims, effects: Pipeline
    ) -> None:
        """Write the handler's effects with its finish; a failure goes to the error policy."""
        try:
            done = await offsets.record_with(message, effects)
        except StoreError:
            # Whether the EXEC landed is unknown: the ledger (if it did) or a new run decides.
            ctx.logger.error("%s ran but its effects and finish may not be written", message)
            raise
        if not done:
            self._lost(
                f"{message.topic}[{message.partition}]",
                f"{message} ran, but another consumer holds its partition: its effects were "
                "dropped, and that consumer applies its own",
            )

    def _lost_offsets(self, tp: TopicPartition, count: int) -> None:
        for _ in range(count):
            self._note("lost")
        logger.error(
            "%s: %d messages of %s ran, but another consumer took the partition over meanwhile "
            "(its lease ran out); that consumer may run them too",
            self.name,
            count,
            tp,
        )

    async def _claim(self, key: str) -> tuple[str, ClaimOutcome, float]:
        # After a failed claim, try again as the same owner: the claim may have reached Redis
        # even though its answer did not, and then only that owner can take it back.
        owner = self._unanswered.pop(key, None) or new_owner()
        claimed_at = time.monotonic()
        try:
            outcome = await self.store.claim(key, owner, self.lease)
        except StoreError as exc:
            self._remember_unanswered(key, owner)
            raise _Unanswered(exc) from exc
        self._store_answers()
        return owner, outcome, claimed_at

    async def _reuse(self, key: str, prefetched: _Prefetched) -> tuple[str, ClaimOutcome, float]:
        """The outcome a batch claim found, while it can still be trusted."""
        owner, outcome, claimed_at, _ = prefetched
        if outcome is not ClaimOutcome.CLAIMED or time.monotonic() - claimed_at < self.lease / 3:
            return owner, outcome, claimed_at
        # It waited in the buffer for a third of its lease, when a renewal is due: renew it
        # before running on it.
        renewed_at = time.monotonic()
        try:
            kept = await self.store.extend(key, owner, self.lease)
        except StoreError as exc:
            self._remember_unanswered(key, owner)
            raise _Unanswered(exc) from exc
        return (owner, outcome, renewed_at) if kept else await self._claim(key)

    def _skip(self, job: Job, ctx: Context, key: str, why: str) -> None:
        self._note("skipped")
        ctx.logger.info("⏭ %s %s (%s); skipped", job, why, key)

    async def _run_claimed(
        self, job: Job, ctx: Context, key: str, owner: str, claimed_at: float
    ) -> None:
        renewal = _Renewal(self, job, ctx, key, owner, claimed_at)
        if self.transactional:
            ctx._offer_transaction(cast("TransactionalStore", self.store).transaction)
        try:
            await self.next(job, ctx)
        except BaseException:
            ctx._take_transaction()  # its effects are dropped with the failure
            await renewal.stop()
            await self._release(job, ctx, key, owner)
            raise
        await renewal.stop()
        effects = ctx._take_transaction() if self.transactional else None
        if effects is not None:
            await self._complete_with(job, ctx, key, owner, effects)
        elif self.periodic:
            await self._complete(job, ctx, key, owner)
        else:
            self._marks.add(key, owner)
        self._note("ran")

    async def _renew(
        self, job: Job, ctx: Context, key: str, owner: str, stop: asyncio.Event
    ) -> None:
        """Extend the lease now and every third of it until `stop` is set or the claim is lost.

        A store that fails to answer never counts as a lost claim here (`keep`'s patience):
        the handler goes on either way, and the done mark decides.
        """

        def failed(exc: StoreError) -> None:
            ctx.logger.warning("renewing the claim on %s failed (%s); trying again", job, exc)

        async def extend() -> bool:
            return await self.store.extend(key, owner, self.lease)

        if await keep(extend, self.lease, stop, patience=None, on_error=failed, first=0):
            return
        self._note("lost")
        # The handler is not cancelled: stopping it half-way could do more harm than a second
        # run, which the next owner's done mark then keeps from happening again.
        ctx.logger.error(
            "lost the claim on %s (%s): its lease ran out, so another worker may run it too; "
            "the handler goes on",
            job,
            key,
        )

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
            self._lost(key, f"{job} ran, but its claim ({key}) had been lost")

    async def _complete_with(
        self, job: Job, ctx: Context, key: str, owner: str, effects: Pipeline
    ) -> None:
        """Write the handler's effects with the done mark; a failure goes to the error policy."""
        store = cast("TransactionalStore", self.store)
        try:
            done = await store.complete_with(key, owner, self.retention, effects)
        except StoreError:
            # Whether the EXEC landed is unknown; releasing would be wrong if it did. The claim
            # runs out, and then the done mark (if it landed) or a new claim decides.
            ctx.logger.error("%s ran but its effects and done mark may not be written", job)
            raise
        if not done:
            self._lost(
                key,
                f"{job} ran, but its claim ({key}) had been lost: its effects were "
                "dropped, and the worker holding the claim applies its own",
            )

    def _lost(self, key: str, what: str) -> None:
        self._note("lost")
        logger.error("%s: %s; another worker may have run it too", self.name, what)

    def _lost_many(self, keys: Sequence[str]) -> None:
        for _ in keys:
            self._note("lost")
        logger.error(
            "%s: %d messages ran, but their claims had been lost (%s, …); another worker may "
            "have run them too",
            self.name,
            len(keys),
            keys[0],
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
        action = (
            "handlers run without it"
            if self.on_store_error == "proceed"
            else "nothing runs until it answers"
        )
        self.health.failed(
            "%s: the idempotency store is unavailable (%s); %s", self.name, exc, action
        )
        if self.on_store_error == "proceed":
            self._note("unguarded")
            ctx.logger.warning("%s runs without an idempotency claim: %s", job, exc)
            await self.next(job, ctx)
            return
        if self.periodic:
            raise StoreError(f"{job} not run: the idempotency store is unavailable ({exc})")
        raise Defer(f"idempotency store unavailable: {exc}", STORE_RETRY) from exc

    def _store_answers(self) -> None:
        self.health.answered("%s: the idempotency store answers again", self.name)

    # -- a batch consumer's batch ----------------------------------------------------------

    async def _batch(self, batch: Batch, ctx: Context) -> None:
        """Run the records of `batch` not done yet; see the module docstring."""
        try:
            plan = await self._plan(batch)
        except _Unanswered as unanswered:
            await self._without_store(batch, ctx, unanswered.error)
            return
        if plan.deferral is not None:
            await self._release_claims(plan.claims)
            self._note("deferred")
            raise plan.deferral
        for index in plan.skipped:
            message = batch.messages[index]
            where = plan.keys.get(index) or f"{message.topic}[{message.partition}]"
            self._skip(message, ctx, where, "already done")
        if not plan.run:
            return
        renewals = [
            _Renewal(self, batch.messages[i], ctx, key, owner, at)
            for i, (key, owner, at) in plan.claims.items()
        ]
        try:
            await self.next(batch.select(plan.run), ctx)
        except BatchError as exc:
            await _stop_all(renewals)
            index = exc.index if 0 <= exc.index < len(plan.run) else len(plan.run)
            self._batch_done(batch, plan, plan.run[:index])
            await self._release_claims(
                {i: plan.claims[i] for i in plan.run[index:] if i in plan.claims}
            )
            if index == len(plan.run):
                raise
            raise BatchError(plan.run[index], exc.error) from exc.error
        except BaseException:
            await _stop_all(renewals)
            await self._release_claims(plan.claims)
            raise
        await _stop_all(renewals)
        self._batch_done(batch, plan, plan.run)

    async def _plan(self, batch: Batch) -> _BatchPlan:
        """Which records of `batch` run, which are done, and the claims taken for them."""
        plan = _BatchPlan()
        wanted: dict[str, int] = {}
        for index, message in enumerate(batch.messages):
            key = self.key_for(message)
            if key is None:
                await self._plan_by_offset(plan, index, message)
            elif key in self._marks or key in wanted:  # done, or a duplicate within the batch
                plan.skipped.append(index)
            else:
                wanted[key] = index
                plan.keys[index] = key
            if plan.deferral is not None:
                return plan
        if wanted:
            await self._claim_batch(plan, wanted)
        skipped = set(plan.skipped)
        plan.run = [i for i in range(len(batch)) if i not in skipped]
        return plan

    async def _plan_by_offset(self, plan: _BatchPlan, index: int, message: Message) -> None:
        offsets = cast("OffsetClaims", self.offsets)
        try:
            state = await offsets.state(message)
        except StoreError as exc:
            raise _Unanswered(exc) from exc
        if state.held:
            where = f"{message.topic}[{message.partition}]"
            plan.deferral = Defer(
                f"{where} is held by another consumer", min(state.held_for, DEFER_POLL)
            )
        elif state.done(message.offset):
            plan.skipped.append(index)

    async def _claim_batch(self, plan: _BatchPlan, wanted: dict[str, int]) -> None:
        """Claim the explicit keys of a batch: what a prefetch claimed is reused, the rest is
        claimed in one call."""
        fresh: list[str] = []
        for key, index in wanted.items():
            prefetched = self._prefetched.pop(key, None) if self._prefetched else None
            if prefetched is None:
                fresh.append(key)
                continue
            owner, outcome, claimed_at = await self._reuse(key, prefetched)
            self._planned(plan, key, index, owner, outcome, claimed_at)
        if not fresh:
            return
        owner, claimed_at = new_owner(), time.monotonic()
        try:
            outcomes = await self.store.claim_many(fresh, owner, self.lease)
        except StoreError as exc:
            await self._release_claims(plan.claims)
            raise _Unanswered(exc) from exc
        self._store_answers()
        for key, outcome in zip(fresh, outcomes, strict=True):
            self._planned(plan, key, wanted[key], owner, outcome, claimed_at)

    def _planned(
        self,
        plan: _BatchPlan,
        key: str,
        index: int,
        owner: str,
        outcome: ClaimOutcome,
        claimed_at: float,
    ) -> None:
        if outcome is ClaimOutcome.CLAIMED:
            plan.claims[index] = (key, owner, claimed_at)
        elif outcome is ClaimOutcome.DONE:
            plan.skipped.append(index)
        elif plan.deferral is None:
            plan.deferral = Defer(f"claimed by another worker ({key})", DEFER_POLL)

    def _batch_done(self, batch: Batch, plan: _BatchPlan, indexes: Sequence[int]) -> None:
        """The records at `indexes` ran: record them in the ledger, or mark their keys done."""
        offsets = self.offsets
        for index in indexes:
            claim = plan.claims.get(index)
            if claim is not None:
                self._marks.add(claim[0], claim[1])
            elif offsets is not None and index not in plan.keys:
                offsets.finished(batch.messages[index])
            self._note("ran")

    async def _release_claims(self, claims: dict[int, tuple[str, str, float]]) -> None:
        if not claims:
            return
        try:
            await self.store.release_many([(key, owner) for key, owner, _ in claims.values()])
        except StoreError as exc:
            logger.warning(
                "%s: releasing %d claims failed (%s); they can be claimed again after the lease",
                self.name,
                len(claims),
                exc,
            )

    # -- batches (the BatchAware protocol) -------------------------------------------------

    def watch_progress(self, finished_below: FinishedBelow) -> None:
        """Learn where the consumer's commit position of each partition is."""
        if self.offsets is not None:
            self.offsets.finished_below = finished_below

    async def prefetch(self, messages: Sequence[Message]) -> None:
        """Claim a fetched batch: its partitions in the ledger, its explicit keys in the store,
        each in one round trip."""
        wanted: dict[str, TopicPartition] = {}
        by_offset: list[Message] = []
        for message in messages:
            try:
                key = self.key_for(message)
            except Exception:  # its own run raises it again, to the error policy
                continue
            if key is None:
                by_offset.append(message)
            elif key not in self._prefetched and key not in self._marks:
                wanted.setdefault(key, TopicPartition(message.topic, message.partition))
        if by_offset and self.offsets is not None:
            try:
                await self.offsets.prefetch(by_offset)
            except StoreError:
                pass  # each message asks on its own, and reports it
            else:
                self._store_answers()
        if wanted:
            await self._prefetch_keys(wanted)

    async def _prefetch_keys(self, wanted: dict[str, TopicPartition]) -> None:
        owner = new_owner()
        claimed_at = time.monotonic()
        try:
            outcomes = await self.store.claim_many(list(wanted), owner, self.lease)
        except StoreError:
            for key in wanted:  # each message claims on its own, as this owner, and reports it
                self._remember_unanswered(key, owner)
            return
        self._store_answers()
        for (key, tp), outcome in zip(wanted.items(), outcomes, strict=True):
            if outcome is not ClaimOutcome.IN_PROGRESS:  # that one asks again when its turn comes
                self._prefetched[key] = _Prefetched(owner, outcome, claimed_at, tp)

    async def flush(self) -> None:
        """Wait until the done marks of handlers that ran are written (or given up)."""
        if self.offsets is not None:
            await self.offsets.flush()
        await self._marks.flush()

    async def discard(self, partitions: Collection[TopicPartition]) -> None:
        """Release the claims (and leases) of `partitions`, which leave this consumer."""
        if self.offsets is not None:
            await self.offsets.release(partitions)
        leaving = set(partitions)
        dropped = [(key, entry) for key, entry in self._prefetched.items() if entry.tp in leaving]
        for key, _ in dropped:
            del self._prefetched[key]
        claims = [(key, e.owner) for key, e in dropped if e.outcome is ClaimOutcome.CLAIMED]
        try:
            await self.store.release_many(claims)
        except StoreError as exc:
            logger.warning(
                "%s: releasing %d claims of revoked partitions failed (%s); they can be claimed "
                "again after the lease",
                self.name,
                len(claims),
                exc,
            )


class _BatchPlan:
    """What the idempotency check decided for the records of a batch, by position."""

    __slots__ = ("claims", "deferral", "keys", "run", "skipped")

    def __init__(self) -> None:
        self.run: list[int] = []
        self.skipped: list[int] = []
        self.keys: dict[int, str] = {}  # records with an explicit key
        self.claims: dict[int, tuple[str, str, float]] = {}  # key, owner, claimed at
        self.deferral: Defer | None = None


async def _stop_all(renewals: Sequence[_Renewal]) -> None:
    for renewal in renewals:
        await renewal.stop()


class _Prefetched(NamedTuple):
    owner: str
    outcome: ClaimOutcome
    claimed_at: float  # time.monotonic() when the claim was sent
    tp: TopicPartition


class _Unanswered(Exception):
    """The store did not answer a claim."""

    def __init__(self, error: StoreError) -> None:
        super().__init__(str(error))
        self.error = error


class _Renewal:
    """Renews a claim while its handler runs, starting a third of a lease after the claim.

    Most handlers end well before that, so the common case costs one timer and no task.
    """

    __slots__ = ("handle", "stopping", "task")

    def __init__(
        self, owner: Idempotency, job: Job, ctx: Context, key: str, token: str, claimed_at: float
    ) -> None:
        self.task: asyncio.Task[None] | None = None
        self.stopping = asyncio.Event()

        def start() -> None:
            renew = owner._renew(job, ctx, key, token, self.stopping)
            self.task = asyncio.create_task(renew, name=f"renew {key}")

        delay = max(0.0, owner.lease / 3 - (time.monotonic() - claimed_at))
        self.handle = asyncio.get_running_loop().call_later(delay, start)

    async def stop(self) -> None:
        """Stop renewing; waits for a renewal on its way to the store (a bounded call)."""
        self.handle.cancel()
        if self.task is not None:
            self.stopping.set()
            await self.task


class _DoneMarks:
    """Done marks of handlers that ran, written in batches while the next messages run.

    A consumer's lane does not wait for its message's done mark: the mark goes into the next
    batch, written `LINGER` after its first mark (so a fetched batch's marks mostly go in one
    call), and one batch at a time is on its way to the store. A message that ran here counts
    as done at once (`in`). A crash loses the marks on their way, as it would lose one a lane
    was waiting for.
    """

    def __init__(self, middleware: Idempotency) -> None:
        self.middleware = middleware
        self.waiting: dict[str, tuple[str, float]] = {}  # key: (owner, when it ran)
        self.sending: dict[str, tuple[str, float]] = {}
        self.task: asyncio.Task[None] | None = None
        self.failing = False  # the last write failed: retries are logged at debug only

    def __contains__(self, key: str) -> bool:
        return key in self.waiting or key in self.sending

    def add(self, key: str, owner: str) -> None:
        self.waiting[key] = (owner, time.monotonic())
        if self.task is None:
            self.task = asyncio.create_task(self._write(), name=f"done marks {key}")

    async def flush(self) -> None:
        task = self.task
        if task is None:
            return
        try:
            async with asyncio.timeout(FLUSH_TIMEOUT):
                await asyncio.shield(task)
        except TimeoutError:
            task.cancel()  # it may finish its current write first; see `taskflow.stores.lease`
            logger.error(
                "%s: %d done marks were not written within %gs; those messages may run again "
                "after their lease",
                self.middleware.name,
                len(self.waiting) + len(self.sending),
                FLUSH_TIMEOUT,
            )
            self.waiting.clear()
            self.sending.clear()

    async def _write(self) -> None:
        try:
            await asyncio.sleep(LINGER)  # the marks of the batch's next records join this write
            while self.waiting:
                self.sending, self.waiting = self.waiting, {}
                await self._send(self.sending)
                self.sending = {}
        finally:
            self.task = None

    async def _send(self, marks: dict[str, tuple[str, float]]) -> None:
        middleware = self.middleware
        claims = [(key, owner) for key, (owner, _) in marks.items()]
        try:
            results = await middleware.store.complete_many(claims, middleware.retention)
        except StoreError as exc:
            self._keep_for_retry(marks, exc)
            await asyncio.sleep(STORE_RETRY)
            return
        if self.failing:
            self.failing = False
            logger.info("%s: the held-back done marks are written", middleware.name)
        lost = [key for (key, _), done in zip(claims, results, strict=True) if not done]
        if len(lost) == 1:
            middleware._lost(lost[0], f"a message ran, but its claim ({lost[0]}) had been lost")
        elif lost:  # say it once for the batch (say, Redis came back without its data)
            middleware._lost_many(lost)

    def _keep_for_retry(self, marks: dict[str, tuple[str, float]], exc: StoreError) -> None:
        """Put back the marks whose claims may still hold; the rest are given up, and said so.

        The first failure is a warning, the retries that follow are debug lines: the store's
        outage itself is the claim path's one error line.
        """
        expiry = time.monotonic() - self.middleware.lease
        kept = {key: mark for key, mark in marks.items() if mark[1] > expiry}
        self.waiting = {**kept, **self.waiting}
        given_up = len(marks) - len(kept)
        level = logging.DEBUG if self.failing and not given_up else logging.WARNING
        self.failing = True
        logger.log(
            level,
            "%s: writing %d done marks failed (%s); retrying until the store answers%s",
            self.middleware.name,
            len(marks),
            exc,
            f", and gave up {given_up} whose lease ran out: they may run again" if given_up else "",
        )
