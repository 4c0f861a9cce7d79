"""The consumer worker: one group member that fetches, dispatches per partition and commits.

One fetch task keeps polling (a member that stops polling is thrown out of its group); records go to
a `PartitionRunner` per assigned partition; a commit task commits, per partition, the lowest
unfinished offset every `commit_interval`. An offset is committed only once its record is finished.
On revoke and on stop, running handlers finish (within a budget), what they finished is committed
explicitly, and buffered records are dropped, to be fetched again by the next owner.

`BatchAware` middleware (idempotency) sees each fetched batch before its records are handed out,
is flushed before a revoke or stop commits, and is told which partitions left.

A retry stage (a registration's retry worker, `spec.retrying`) hands its runners only records that
are due: each partition has a `DueGate` that holds what is not due yet, while the partition is
paused and a task waits on the app's clock for the head to fall due (`taskflow.workers.due`).

Two bounds pause fetching: a partition's own (``max_buffered`` records), and the process's memory
budget (`taskflow.workers.budget`), shared by every consumer worker: while it is spent, every
partition is paused; each partition's `Account` releases its records as they finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Collection
from dataclasses import replace
from typing import TYPE_CHECKING

from taskflow.brokers.base import ConsumerOptions
from taskflow.context import WorkerLogger
from taskflow.crew import ABANDON_GRACE, Crew
from taskflow.exceptions import BrokerError, ProcessExit
from taskflow.handler import threads_of
from taskflow.retry_topics import label
from taskflow.telemetry.status import ConsumerStatus, PartitionStatus, PolicyCount
from taskflow.workers.batch_work import one_record
from taskflow.workers.batching import Batches
from taskflow.workers.budget import BufferBudget
from taskflow.workers.due import DueGate, epoch_ms
from taskflow.workers.partition import PartitionRunner
from taskflow.workers.processing import Processor

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from datetime import datetime

    from taskflow.app import App
    from taskflow.brokers.base import Broker, Consumer
    from taskflow.handler import Handler
    from taskflow.message import Message, TopicPartition
    from taskflow.middleware import BatchAware
    from taskflow.specs import ConsumerSpec

__all__ = ["ConsumerWorker"]

logger = logging.getLogger("taskflow.consumer")

FETCH_TIMEOUT = 0.5
FETCH_RETRY = 1.0
REVOKE_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
CANCELLED_LEAVE_BUDGET = 4.0  # below the Manager's CANCEL_GRACE
COMMIT_TIMEOUT = 10.0  # a commit blocks while the broker is down; give up and commit later


class ConsumerWorker:
    """Consumes a registration's topics as one member of its group."""

    kind = "consumer"

    def __init__(
        self,
        spec: ConsumerSpec,
        app: App,
        broker: Broker,
        handler: Handler,
        *,
        stopping: asyncio.Event,
        commit_interval: float = 1.0,
        revoke_timeout: float = REVOKE_TIMEOUT,
        options: ConsumerOptions | None = None,
        batch_aware: Sequence[BatchAware] = (),
        budget: BufferBudget | None = None,
    ) -> None:
        self.spec = spec
        self.budget = budget or BufferBudget(app.settings.buffer_bytes)
        self.batch_aware = tuple(batch_aware)
        self.broker = broker
        self.commit_interval = commit_interval
        self.revoke_timeout = revoke_timeout
        self.options = _with_fetch_bytes(options or ConsumerOptions(), self.budget)
        self.log = WorkerLogger(logging.getLogger(app.name), spec.name)
        self.processor = Processor(spec, app, broker, one_record(spec, handler), stopping, self.log)
        self.batches = Batches(self.processor, handler) if spec.batch is not None else None
        self.processor.on_exit = self._exit_requested
        self.rebalances = 0
        self.last_poll: float | None = None
        self._stop = asyncio.Event()
        self._commit_due = asyncio.Event()
        self._commit_lock = asyncio.Lock()
        self._runners: dict[TopicPartition, PartitionRunner] = {}
        self._leaving: dict[TopicPartition, PartitionRunner] = {}  # revoked, being finished
        self._paused: set[TopicPartition] = set()
        self._gates: dict[TopicPartition, DueGate] = {}  # a retry stage's, per partition
        self.clock = app.clock
        self._epoch = 0
        self._consumer: Consumer | None = None
        self._task_group: Crew | None = None
        self.exit_request: ProcessExit | None = None  # a handler raised SystemExit or Ctrl-C
        for middleware in self.batch_aware:
            watch = getattr(middleware, "watch_progress", None)
            if watch is not None:
                watch(self.finished_below)

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> str:
        """One line for `taskflow info`."""
        spec = self.spec
        text = f"consumes {', '.join(spec.topics)} as group {spec.consumer_group}"
        if spec.retrying:
            return f"{text}, running the retries of group {spec.group}"
        if spec.stage_topics:
            text += f", retrying through {', '.join(spec.stage_topics)}"
        if spec.dead_letter:
            text += f", dead letters to {spec.dead_letter}"
        return text

    # -- the Worker protocol ---------------------------------------------------------------

    async def start(self) -> None:
        self._stop.clear()
        consumer = self.broker.consumer(
            self.spec.topics, group=self.spec.consumer_group, listener=self, options=self.options
        )
        lanes = Crew()  # the handlers' tasks: one that ignores cancellation is given up on
        self.budget.subscribe(self)
        try:
            async with asyncio.TaskGroup() as group:
                self._task_group, self._consumer = lanes, consumer
                await consumer.start()
                member = self.options.group_instance_id
                self.log.info(
                    "→ consuming %s as group %s%s",
                    ", ".join(self.spec.topics),
                    self.spec.consumer_group,
                    f", static member {member}" if member else "",
                )
                fetcher = group.create_task(self._fetch_loop(consumer), name=f"{self.name}:fetch")
                committer = group.create_task(self._commit_loop(), name=f"{self.name}:commit")
                watcher = group.create_task(_raise_failure(lanes), name=f"{self.name}:lanes")
                await self._stop.wait()
                fetcher.cancel()
                await self._finish_all(timeout=None)
                committer.cancel()
                watcher.cancel()
        finally:
            self.budget.unsubscribe(self)
            await self._abandon(lanes)
            await self._leave(consumer)
        if self.exit_request is not None:
            raise self.exit_request

    async def _abandon(self, lanes: Crew) -> None:
        """Cancel the handlers still running; name those that ignore it, and go on without them."""
        running = {id(m): m for r in self._runners.values() for m in r.running}
        left = await lanes.close(ABANDON_GRACE)
        if not left:
            return
        for message in running.values():
            self.log.error(
                "abandoned handler %s for %s: it ignored cancellation; not committed, "
                "it will be redelivered",
                self.name,
                message,
            )

    async def stop(self) -> None:
        self._stop.set()

    def _exit_requested(self, request: ProcessExit) -> None:
        """A handler asked for the process to stop: drain as on stop, then raise `request`."""
        if self.exit_request is None:
            self.exit_request = request
        for runner in self._runners.values():
            runner.close()  # nothing after the unfinished message runs
        self._stop.set()

    def finished_below(self, tp: TopicPartition) -> int | None:
        """The offset below which every record of `tp` this consumer took is finished: the
        next commit of it. None when `tp` is not assigned here or nothing of it was taken."""
        runner = self._runners.get(tp) or self._leaving.get(tp)
        return None if runner is None else runner.tracker.commit_target

    # -- fetching --------------------------------------------------------------------------

    async def _fetch_loop(self, consumer: Consumer) -> None:
        while True:
            try:
                batches = await consumer.getmany(FETCH_TIMEOUT)
            except BrokerError as exc:
                self.log.warning("fetch failed: %s; polling again in %.0fs", exc, FETCH_RETRY)
                await asyncio.sleep(FETCH_RETRY)
                continue
            self.last_poll = time.monotonic()
            if self.batch_aware and batches:
                await self._prefetch(batches)
            for tp, records in batches.items():
                runner = self._runners.get(tp)
                # Else revoked meanwhile (or closing): the next owner reads them again.
                if runner is not None and not runner.closed:
                    self._deliver(runner, records)
            if batches and self.budget.spent:
                self._hold()  # also any partition assigned while the budget could not pause it
            # Let the lanes run before fetching more: a consumer's buffered records are handed
            # out without waiting, and a loop that never yields would fill every partition to
            # its bound, pause it, and make aiokafka throw its prefetched records away.
            await asyncio.sleep(0)

    async def _prefetch(self, batches: Mapping[TopicPartition, Sequence[Message]]) -> None:
        """Show the batch to `BatchAware` middleware, then drop what it holds for partitions
        revoked meanwhile (their records are not handed out)."""
        records = [m for tp, batch in batches.items() if tp in self._runners for m in batch]
        for middleware in self.batch_aware:
            try:
                await middleware.prefetch(records)
            except Exception:
                self.log.exception("%r failed to prefetch a batch; its messages run one by one")
        gone = [tp for tp in batches if tp not in self._runners]
        if gone:
            await self._discard(gone)

    async def _discard(self, partitions: Sequence[TopicPartition]) -> None:
        for middleware in self.batch_aware:
            try:
                await middleware.discard(partitions)
            except Exception:
                self.log.exception("%r failed to discard %s", middleware, _partitions(partitions))

    async def _flush(self) -> None:
        for middleware in self.batch_aware:
            try:
                await middleware.flush()
            except Exception:
                self.log.exception("%r failed to flush", middleware)

    def _deliver(self, runner: PartitionRunner, records: Sequence[Message]) -> None:
        """Hand fetched records to their runner (counted against the budget by it); on a retry
        stage only those that are due, holding the rest with the partition paused."""
        gate = self._gates.get(runner.tp)
        if gate is not None:
            records = gate.admit(records, epoch_ms(self.clock.now()))
            if gate.held and gate.waiter is None:
                self._hold_until_due(runner, gate)
        runner.feed(records)
        self._apply_backpressure(runner)

    def _hold_until_due(self, runner: PartitionRunner, gate: DueGate) -> None:
        assert self._consumer is not None
        assert self._task_group is not None
        self._consumer.pause([runner.tp])
        gate.waiter = self._task_group.create_task(
            self._wait_due(runner, gate), name=f"{runner.tp}:due"
        )

    async def _wait_due(self, runner: PartitionRunner, gate: DueGate) -> None:
        """Feed the held records as they fall due, then resume fetching the partition."""
        try:
            while (head := gate.head_due) is not None:
                self._warn_if_too_far_ahead(runner, gate, head)
                await self.clock.sleep_until(head)
                if runner.closed:
                    return
                ready = gate.release(epoch_ms(self.clock.now()))
                runner.feed(ready)
                self._apply_backpressure(runner)
        finally:
            gate.waiter = None
        if not runner.paused and not self.budget.spent and self._consumer is not None:
            with contextlib.suppress(BrokerError):  # the partition left meanwhile
                self._consumer.resume([runner.tp])

    def _warn_if_too_far_ahead(self, runner: PartitionRunner, gate: DueGate, due: datetime) -> None:
        """Say so when the head is due further ahead than its stage's delay could make it: the
        partition waits for it, and nothing else would tell why."""
        head = gate.too_far_ahead(epoch_ms(self.clock.now()))
        if head is None:
            return
        also, fields = self.processor.named(head)
        self.log.warning(
            "%s%s is due %s, further ahead than its stage's %s delay: a clock ahead of this "
            "replica's wrote it, or its taskflow-due header was changed; %s waits for it",
            head,
            also,
            due.isoformat(timespec="seconds"),
            label(gate.delay),
            runner.tp,
            extra=fields,
        )

    def _holding(self, tp: TopicPartition) -> bool:
        """True while a retry stage holds records of `tp` that are not due."""
        gate = self._gates.get(tp)
        return gate is not None and bool(gate.held)

    def _apply_backpressure(self, runner: PartitionRunner) -> None:
        if not runner.paused and runner.buffered >= self.spec.max_buffered:
            runner.paused = True
            self._paused.add(runner.tp)
            assert self._consumer is not None
            self._consumer.pause([runner.tp])

    def _resume(self, runner: PartitionRunner) -> None:
        """Called by a runner that was paused once it has drained below its low-water mark."""
        runner.paused = False
        self._paused.discard(runner.tp)
        if self._consumer is not None and not self.budget.spent and not self._holding(runner.tp):
            self._consumer.resume([runner.tp])

    # -- the memory budget (the BudgetListener protocol) -----------------------------------

    def on_budget_spent(self) -> None:
        """Pause every partition: the records the process holds reached the budget's half."""
        self._hold()

    def on_budget_available(self) -> None:
        """Resume every partition, except those paused by their own `max_buffered` bound."""
        resumed = [
            tp
            for tp, runner in self._runners.items()
            if not runner.paused and not self._holding(tp)
        ]
        if self._consumer is not None and resumed:
            with contextlib.suppress(BrokerError):  # still starting: nothing of it was paused
                self._consumer.resume(resumed)

    def _hold(self) -> None:
        """Pause every partition this worker consumes, while the budget is spent."""
        if self._consumer is not None and self._runners:
            # Still starting, it cannot pause yet: the fetch loop pauses them once it runs.
            with contextlib.suppress(BrokerError):
                self._consumer.pause(list(self._runners))

    @property
    def buffered_bytes(self) -> int:
        """The bytes of the fetched records this worker holds (see `taskflow.workers.budget`)."""
        runners = [*self._runners.copy().values(), *self._leaving.copy().values()]
        return sum(r.account.held for r in runners if r.account is not None)

    # -- committing ------------------------------------------------------------------------

    async def _commit_loop(self) -> None:
        while True:
            await self._commit_due.wait()
            self._commit_due.clear()
            await self.commit()
            if self.commit_interval:
                await asyncio.sleep(self.commit_interval)

    async def commit(
        self, runners: list[PartitionRunner] | None = None, *, timeout: float = COMMIT_TIMEOUT
    ) -> None:
        """Commit what the given runners (default: all) have finished since their last commit.

        A commit that fails is logged and tried again after `commit_interval`, so an idle
        partition's finished work is committed once the broker answers again.
        """
        consumer = self._consumer
        if consumer is None:
            return
        chosen = list(self._runners.values()) if runners is None else runners
        targets = {
            r.tp: target
            for r in chosen
            if (target := r.tracker.commit_target) is not None and target != r.committed
        }
        if not targets:
            return
        async with self._commit_lock:
            try:
                async with asyncio.timeout(timeout):
                    await consumer.commit(targets)
            except (BrokerError, TimeoutError) as exc:
                reason = exc if isinstance(exc, BrokerError) else f"no answer in {timeout:g}s"
                self.log.warning("commit of %s failed: %s", _offsets(targets), reason)
                self._commit_due.set()
                return
        for runner in chosen:
            if runner.tp in targets:
                runner.committed = targets[runner.tp]
        self.log.debug("committed %s", _offsets(targets))

    # -- rebalancing (the RebalanceListener protocol) --------------------------------------

    async def on_partitions_assigned(self, assigned: frozenset[TopicPartition]) -> None:
        group = self._task_group
        assert group is not None, "assignment before start"
        self.rebalances += 1
        for tp in sorted(assigned):
            self._epoch += 1
            if self.batches is not None:
                assert self._consumer is not None
                self._runners[tp] = self.batches.runner(
                    tp,
                    self._epoch,
                    group,
                    self._consumer,
                    progress=self._commit_due,
                    on_drained=self._resume,
                )
                self._runners[tp].account = self.budget.account()
                continue
            runner = PartitionRunner(
                tp,
                self._epoch,
                self.processor,
                group,
                ordering=self.spec.ordering,
                concurrency=self.spec.concurrency,
                progress=self._commit_due,
                on_drained=self._resume,
            )
            runner.resume_below = self.spec.max_buffered // 2
            runner.account = self.budget.account()
            self._runners[tp] = runner
            if self.spec.retrying:
                self._gate(tp)
        if self.budget.spent:
            self._hold()
        self.log.info("assigned %s", _partitions(assigned))

    def _gate(self, tp: TopicPartition) -> None:
        stages = self.spec.retry_topics
        assert stages is not None
        self._drop_gate(tp)
        self._gates[tp] = DueGate(stages.delay_of(tp.topic), self.spec.group)

    def _drop_gate(self, tp: TopicPartition) -> None:
        """Forget what a retry-stage partition held: the next owner fetches it again."""
        gate = self._gates.pop(tp, None)
        if gate is not None and gate.waiter is not None:
            gate.waiter.cancel()

    async def on_partitions_revoked(self, revoked: frozenset[TopicPartition]) -> None:
        runners = [r for tp in revoked if (r := self._runners.pop(tp, None)) is not None]
        for tp in revoked:
            self._drop_gate(tp)
        self._paused.difference_update(revoked)
        self._leaving.update((r.tp, r) for r in runners)
        try:
            await self._finish(runners, timeout=self.revoke_timeout)
        finally:
            for runner in runners:
                if runner.account is not None:
                    runner.account.close()
                if self._leaving.get(runner.tp) is runner:
                    del self._leaving[runner.tp]
        self.log.info("revoked %s", _partitions(revoked))

    # -- finishing -------------------------------------------------------------------------

    async def _finish_all(self, timeout: float | None) -> None:
        await self._finish(list(self._runners.values()), timeout=timeout)

    async def _finish(self, runners: list[PartitionRunner], timeout: float | None) -> None:
        """Close runners, let running handlers end within `timeout`, commit what they finished."""
        for runner in runners:
            runner.close()
            self._drop_gate(runner.tp)
        try:
            results = await asyncio.gather(*(r.wait_idle(timeout) for r in runners))
            for runner, idle in zip(runners, results, strict=True):
                if not idle:
                    self.log.warning(
                        "%s: handlers still running after %.0fs; cancelling %s",
                        runner.tp,
                        timeout or 0,
                        ", ".join(map(str, runner.running)),
                    )
                    runner.cancel()
        finally:
            if self.batch_aware:
                await self._flush()
                await self._discard([r.tp for r in runners])
            await self.commit(runners)

    async def _leave(self, consumer: Consumer) -> None:
        """Commit what is finished (also after a cancellation) and leave the group.

        After a cancellation (the shutdown deadline passed) both steps together stay within
        `CANCELLED_LEAVE_BUDGET`, inside the grace the Manager gives a cancelled worker.
        """
        task = asyncio.current_task()
        cancelled = task is not None and task.cancelling() > 0
        commit_budget = CANCELLED_LEAVE_BUDGET / 2 if cancelled else COMMIT_TIMEOUT
        stop_budget = CANCELLED_LEAVE_BUDGET / 2 if cancelled else STOP_TIMEOUT
        try:
            await self.commit(timeout=commit_budget)
        finally:
            await self._stop_consumer(consumer, stop_budget)
        self.log.info("← stopped consuming")

    async def _stop_consumer(self, consumer: Consumer, budget: float) -> None:
        try:
            async with asyncio.timeout(budget):
                await consumer.stop()
        except TimeoutError:
            self.log.error(
                "leaving group %s took over %gs; gave up", self.spec.consumer_group, budget
            )
        except BrokerError as exc:
            self.log.error("leaving group %s failed: %s", self.spec.consumer_group, exc)
        finally:
            for runner in self._runners.values():
                if runner.account is not None:
                    runner.account.close()
            self._runners.clear()
            for tp in list(self._gates):
                self._drop_gate(tp)
            self._paused.clear()
            self._consumer = self._task_group = None

    # -- status ----------------------------------------------------------------------------

    def status(self) -> ConsumerStatus:
        """How this consumer is, from what it knows locally: never a broker request, so a
        metrics callback may call it from another thread."""
        threads = threads_of(self.spec.handler)
        return ConsumerStatus(
            kind=self.kind,
            activity=self._activity(),
            topics=tuple(self.spec.topics),
            group=self.spec.consumer_group,
            partitions=tuple(self._partitions()),
            in_flight=sum(r.tracker.in_flight for r in self._runners.copy().values()),
            buffered_bytes=self.buffered_bytes,
            buffer_budget=self.budget.limit,
            rebalances=self.rebalances,
            last_poll=self.last_poll,
            policy_counts=self._policy_counts(),
            stuck_threads=len(threads.stuck) if threads is not None else None,
            retry_topics=self.spec.stage_topics if not self.spec.retrying else (),
            dead_letter=self.spec.dead_letter,
        )

    def _activity(self) -> str:
        if self._consumer is None:
            return "stopped"
        return "consuming" if self._consumer.assignment() else "waiting for partitions"

    def _partitions(self) -> list[PartitionStatus]:
        """Each assigned partition, in order. The lag is the high watermark as of its last
        fetch minus the lowest offset not finished yet (the one committed next, or on a retry
        stage the first record held for its due time; before any record of it arrived, the
        fetch position); None until it has been fetched once."""
        consumer = self._consumer
        if consumer is None:
            return []
        runners = self._runners.copy()
        gates = self._gates.copy()
        paused = frozenset(self._paused) | {tp for tp, gate in gates.items() if gate.held}
        held = self.budget.spent  # every partition is paused for the memory budget
        positions = consumer.positions()
        partitions = []
        for tp in sorted(consumer.assignment()):
            runner, fetched = runners.get(tp), positions.get(tp)
            try:  # the runner may change under a reader on another thread: skip it this time
                unfinished = runner.tracker.commit_target if runner is not None else None
                in_flight = runner.buffered if runner is not None else 0
                if unfinished is None and (gate := gates.get(tp)) is not None and gate.held:
                    unfinished = gate.held[0].offset  # fetched, but waiting for its due time
            except (IndexError, RuntimeError):
                continue
            high = fetched.high_watermark if fetched is not None else None
            start = fetched.position if unfinished is None and fetched is not None else unfinished
            lag = None if start is None or high is None else max(high - start, 0)
            committed = runner.committed if runner is not None else None
            partitions.append(
                PartitionStatus(tp, committed, high, lag, in_flight, held or tp in paused)
            )
        return partitions

    def _policy_counts(self) -> tuple[PolicyCount, ...]:
        return tuple(
            PolicyCount(decision.action, topic, error, decision.reason, fate, count, decision.stage)
            for (decision, topic, error, fate), count in self.processor.outcomes.copy().items()
        )


def _with_fetch_bytes(options: ConsumerOptions, budget: BufferBudget) -> ConsumerOptions:
    """`options`, fetching no more at once than the memory budget allows unless they say."""
    if options.fetch_bytes is not None:
        return options
    return replace(options, fetch_bytes=budget.fetch_bytes)


async def _raise_failure(lanes: Crew) -> None:
    """Raise what a lane raised (a bug: handlers' errors are the error policy's), as a TaskGroup
    would, so the worker crashes and is restarted."""
    raise await lanes.failed()


def _partitions(tps: Collection[TopicPartition]) -> str:
    return ", ".join(map(str, sorted(tps))) or "nothing"


def _offsets(targets: dict[TopicPartition, int]) -> str:
    return ", ".join(f"{tp}@{offset}" for tp, offset in sorted(targets.items()))
