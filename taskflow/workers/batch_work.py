"""A batch under the error policy: whole-batch retries, giving up record by record, BatchError.

An exception retries the whole batch with the registration's backoff (`Defer` waits without
counting an attempt); when the policy gives up (``max_attempts`` with a dead-letter topic, or a
`Reject`), every record of the batch is dead-lettered, or skipped without a dead-letter topic, one
by one. A `BatchError(index, error)` finishes the records before `index` at once, and runs record
`index` alone under the single-record policy (`Processor.recover`, its handler being the stack
called with a batch of that one record: `one_record`); the caller hands the rest back to run again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskflow.batch import Batch
from taskflow.context import Context
from taskflow.exceptions import BatchError, Defer, Retry
from taskflow.policy import DEFER, RAISE, RETRY, Decision
from taskflow.workers.processing import STOPS_PROCESS, exit_request

if TYPE_CHECKING:
    from taskflow.handler import Handler, Job
    from taskflow.message import Message
    from taskflow.specs import ConsumerSpec
    from taskflow.workers.processing import Pause, Processor

__all__ = ["BatchWork", "Decode", "PauseFor", "Settle", "one_record"]

Decode = Callable[["Message"], Any]
PauseFor = Callable[["Message"], "Pause"]
"""The pause of one record: False once its partition closes."""
Settle = Callable[[int], None]
"""Told that the first `count` records of the batch are done."""


class _OneRecord:
    """The batch stack called for one record: how the single-record policy retries a record.

    A `BatchError` it raises for its only record is that record's own failure.
    """

    def __init__(self, stack: Handler, decode: Decode) -> None:
        self.stack = stack
        self.decode = decode

    async def __call__(self, job: Job, ctx: Context) -> None:
        message: Message = job  # type: ignore[assignment]
        batch = Batch((message,), (self.decode(message),))
        try:
            await self.stack(batch, ctx)
        except BatchError as exc:
            if exc.index != 0:
                raise
            raise exc.error from exc


def one_record(spec: ConsumerSpec, stack: Handler) -> Handler:
    """The handler the single-record policy calls: `stack` itself, or for a batch consumer the
    stack called with a batch of one record."""
    if spec.batch is None or spec.batch_decode is None:
        return stack
    return _OneRecord(stack, spec.batch_decode)


class BatchWork:
    """Runs a batch through the handler stack under the registration's error policy.

    Args:
        processor: The consumer's single-record processor (its handler is `one_record`): the
            policy, the dead letters and the counts are its.
        stack: The handler stack, called with a `Batch`.
    """

    def __init__(self, processor: Processor, stack: Handler) -> None:
        self.processor = processor
        self.stack = stack
        self.spec = processor.spec
        self.log = processor.log

    async def run(self, batch: Batch, pause: Pause, pause_for: PauseFor, settle: Settle) -> int:
        """Run `batch` until it is finished or given up; return how many of its first records
        are finished (handled, skipped or dead-lettered). The others are not.

        `pause` waits for the whole batch (False once one of its partitions closes);
        `pause_for(message)` waits for one record; `settle(count)` is told, before a record
        named by a `BatchError` is retried alone, that the `count` records before it are done.
        """
        try:
            await self._call(batch, 1)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            return await self._recover(batch, exc, pause, pause_for, settle)
        return len(batch)

    async def _call(self, batch: Batch, attempt: int) -> None:
        processor = self.processor
        ctx = Context(processor.app, self.spec.name, self.log, processor.stopping, attempt=attempt)
        await self.stack(batch, ctx)

    async def _recover(
        self, batch: Batch, exc: BaseException, pause: Pause, pause_for: PauseFor, settle: Settle
    ) -> int:
        """The error policy after attempt 1 at `batch` raised `exc`; see the module docstring."""
        attempt, deferred = 1, False
        policy = self.processor.policy
        while True:
            if isinstance(exc, BatchError) and 0 <= exc.index < len(batch):
                return await self._split(batch, exc, pause_for, settle)
            if isinstance(exc, STOPS_PROCESS):
                self._stop_process(batch, exc)
                return 0
            decision = policy.after_failure(exc, attempt)
            if decision == RAISE:
                raise exc
            if decision == DEFER:
                assert isinstance(exc, Defer)
                self.log.log(
                    logging.DEBUG if deferred else logging.INFO,
                    "⏸ %s deferred (%s); again in %.3gs",
                    batch,
                    exc.reason or "no reason given",
                    exc.delay,
                )
                deferred = True
                if not await pause(exc.delay):
                    return 0
            elif decision == RETRY:
                delay = self.spec.retry.delay(attempt, self.processor.rng)
                self._log_failure(batch, exc, attempt, delay)
                self._count(decision, batch, exc)
                if not await pause(delay):
                    return 0
                attempt += 1
            else:
                return await self._give_up(batch, exc, attempt, decision, pause_for)
            try:
                await self._call(batch, attempt)
            except asyncio.CancelledError:
                raise
            except BaseException as failure:
                exc = failure
            else:
                return len(batch)

    async def _split(
        self, batch: Batch, error: BatchError, pause_for: PauseFor, settle: Settle
    ) -> int:
        """Records before `error.index` are done (settled at once, so they are committed while
        that record is retried); that record goes through the single-record policy on its own;
        the caller hands the rest back to run again."""
        index = error.index
        settle(index)
        message = batch.messages[index]
        self.log.info(
            "✗ %s: record %d (%s) failed (%s: %s); the %d before it are done",
            batch,
            index,
            message,
            type(error.error).__name__,
            error.error,
            index,
        )
        if await self.processor.recover(message, error.error, pause_for(message)):
            return index + 1
        return index

    async def _give_up(
        self,
        batch: Batch,
        exc: BaseException,
        attempt: int,
        decision: Decision,
        pause_for: PauseFor,
    ) -> int:
        """Skip or dead-letter every record of `batch`, one by one, in order."""
        for done, message in enumerate(batch.messages):
            if not await self.processor.give_up(
                message, exc, attempt, decision, pause_for(message)
            ):
                return done
        return len(batch)

    def _stop_process(self, batch: Batch, exc: BaseException) -> None:
        request = exit_request(exc)
        self.log.error(
            "handler %s raised %s for %s: stopping the process; the batch is not committed, "
            "it will be redelivered",
            self.spec.name,
            request.reason,
            batch,
        )
        if self.processor.on_exit is not None:
            self.processor.on_exit(request)

    def _log_failure(self, batch: Batch, exc: BaseException, attempt: int, delay: float) -> None:
        if isinstance(exc, Retry):
            self.log.info(
                "↻ %s attempt %d: retry requested (%s); again in %.3gs",
                batch,
                attempt,
                exc.reason or "no reason given",
                delay,
            )
            return
        self.log.warning(
            "✗ %s attempt %d failed: %s: %s; retrying the batch in %.3gs",
            batch,
            attempt,
            type(exc).__name__,
            exc,
            delay,
            exc_info=exc if attempt == 1 else None,
        )

    def _count(self, decision: Decision, batch: Batch, exc: BaseException) -> None:
        outcomes = self.processor.outcomes
        for message in batch.messages:
            key = (decision, message.topic, type(exc), None)
            outcomes[key] = outcomes.get(key, 0) + 1
