"""Running one message through its handler under the error policy of the registration.

The policy (`taskflow.policy`): a handler that raises is retried with backoff and
its partition (or key) waits meanwhile; a tombstone the handler's payload type does not
admit (`SkipTombstone`) is skipped, counted and committed; a `Reject` (or an exception in
`reject_on`, or a payload that cannot be decoded) is never retried; it goes to the dead-letter
topic when there is one, else it is logged and skipped. A message that exhausts `max_attempts`
goes to the dead-letter topic.
Cancellation and MemoryError propagate and are never dead-lettered. A handler raising SystemExit or
KeyboardInterrupt asks for the process to stop: the message is left unfinished (`stop_process`).
Any other BaseException is a failure of the message, under the policy like an Exception.

With retry topics (`taskflow.retry_topics`) a failure does not wait in place: the original is
published to the next retry stage (retried while the broker may yet take it; one it will never
take is dead-lettered as ``unretryable``) and is finished once the broker acknowledged it. On a
retry stage (`spec.retrying`) the attempt is read from the record, a record another group failed
is skipped, a dead letter or the next stage names the original record, and so does every line
logged about it, after the copy's own place (`Processor.named`).

A dead letter is retried for as long as the broker may yet take it (it is down, a leader moves). One
that is too large goes without the original's value (`taskflow.workers.dead_letter`); one the broker
will never take (not authorised, an invalid topic) is skipped with an ERROR line, so that it never
holds its partition.

The Processor counts what it decided (`outcomes`), by topic and exception type, and what became of
dead letters not written whole, for the observable metrics; that happens on the failure path only.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Literal

from taskflow.context import Context, WorkerLogger
from taskflow.exceptions import (
    BrokerError,
    Defer,
    ProcessExit,
    RecordRefused,
    RecordTooLarge,
    Retry,
)
from taskflow.handler import ignores_ctx
from taskflow.policy import (
    DEAD_LETTER_UNRETRYABLE,
    DEFER,
    RAISE,
    RETRY,
    SKIP,
    SKIP_TOMBSTONE,
    Decision,
    ErrorPolicy,
)
from taskflow.retry_topics import LATEST_MS, attempts_made, failed_in, original
from taskflow.workers.dead_letter import (
    WHOLE,
    DeadLetter,
    dead_letter,
    dead_letter_headers,
    fitting,
    retry_headers,
)

if TYPE_CHECKING:
    from taskflow.app import App
    from taskflow.brokers.base import Broker
    from taskflow.handler import Handler
    from taskflow.message import Headers, Message, TopicPartition
    from taskflow.specs import ConsumerSpec

__all__ = ["STOPS_PROCESS", "DeadLetterFate", "DecisionKey", "Processor", "exit_request"]

logger = logging.getLogger("taskflow.consumer")

# Wait up to `seconds`; return False when the wait was cut short because the work must stop.
Pause = Callable[[float], Awaitable[bool]]
# What became of a dead letter that was not written whole: sent without the value, or not at all.
DeadLetterFate = Literal["value_omitted", "dropped"]
VALUE_OMITTED: Final = "value_omitted"
DROPPED: Final = "dropped"
# What was decided after a failed attempt (not DEFER), on which topic, for which exception type,
# and for a dead letter not written whole, what became of it.
DecisionKey = tuple[Decision, str, type[BaseException], DeadLetterFate | None]


class Processor:
    """Calls the handler stack for a message and applies retries, rejects and dead letters."""

    def __init__(
        self,
        spec: ConsumerSpec,
        app: App,
        broker: Broker,
        handler: Handler,
        stopping: asyncio.Event,
        log: WorkerLogger,
    ) -> None:
        self.spec = spec
        self.app = app
        self.broker = broker
        self.handler = handler
        self.stopping = stopping
        self.log = log
        self.rng = random.Random()
        self.policy = ErrorPolicy.of(spec)
        # How often each outcome was applied: retries, skips and dead letters (once acknowledged).
        self.outcomes: dict[DecisionKey, int] = {}
        # A handler that never reads its Context can share one instead of getting one per message
        # (not on a retry stage, whose first try reads the attempt from the record).
        self.shared_ctx = (
            Context(app, spec.name, log, stopping)
            if ignores_ctx(handler) and not spec.retrying
            else None
        )
        # Then a lane may call the handler itself. (A timeout is a middleware layer, so a handler
        # with one never gets here: see `taskflow.middleware.timeout`.)
        self.direct = self.shared_ctx is not None
        # Told when a handler raised SystemExit or KeyboardInterrupt (set by the worker).
        self.on_exit: Callable[[ProcessExit], None] | None = None
        self._tombstones_told: set[TopicPartition] = set()  # partitions whose skip was logged
        self._others_told: set[TopicPartition] = set()  # retry partitions shared with a group

    def first_try(self, message: Message) -> Awaitable[None]:
        """Start the first attempt at `message`: the fast path, the handler and nothing else.

        If it raises, hand the exception to `recover`.
        """
        if self.spec.retrying:
            return self._first_retry(message)
        ctx = self.shared_ctx or Context(
            self.app, self.spec.name, self.log, self.stopping, message=message
        )
        return self.handler(message, ctx)

    async def process(self, message: Message, pause: Pause) -> bool:
        """Handle `message` until it is finished (True) or `pause` says to give up (False)."""
        try:
            await self.first_try(message)
        except Exception as exc:
            return await self.recover(message, exc, pause)
        return True

    async def recover(self, message: Message, exc: BaseException, pause: Pause) -> bool:
        """Apply the error policy after attempt 1 raised `exc`; retry until finished or given up.

        A `Defer` waits its delay and runs the message again without counting an attempt.

        Returns True once the message is finished (handled, skipped or dead-lettered), False
        when `pause` says to stop waiting (the partition is closing): then it is not finished.
        """
        attempt, deferred = self.attempt_of(message), False
        while True:
            if isinstance(exc, STOPS_PROCESS):
                self._stop_process(message, exc)
                return False
            decision = self.policy.after_failure(exc, attempt)
            if decision == RAISE:
                raise exc
            if decision == SKIP_TOMBSTONE:
                self._skip_tombstone(message, exc)
                return True
            if decision == DEFER:
                assert isinstance(exc, Defer)
                self._log_deferral(message, exc, first=not deferred)
                deferred = True
                if not await pause(exc.delay):
                    return False
            elif decision.action == "retry_topic":
                return await self._to_stage(message, exc, attempt, decision, pause)
            elif decision == RETRY:
                delay = self.spec.retry.delay(attempt, self.rng)
                self._log_failure(message, exc, attempt, delay)
                self._count(decision, message, exc)
                if not await pause(delay):
                    return False
                attempt += 1
            else:
                return await self._give_up(message, exc, attempt, decision, pause)
            try:
                await self._call(message, attempt)
            except asyncio.CancelledError:
                raise
            except BaseException as failure:
                exc = failure
            else:
                return True

    def attempt_of(self, message: Message) -> int:
        """The attempt a run of `message` is: 1, or on a retry stage one more than its record
        says were made."""
        return attempts_made(message) + 1 if self.spec.retrying else 1

    def original(self, message: Message) -> Message:
        """The record `message` stands for: itself, or on a retry stage the original."""
        return original(message) if self.spec.retrying else message

    def named(self, message: Message) -> tuple[str, dict[str, object] | None]:
        """How a line names `message` after its own place: on a retry stage, the original it
        stands for (`` (orders[2]@17)``, so a search for the original finds every line of it),
        with the same as `extra` fields for JSON logs; else nothing."""
        source = self.original(message)
        if source is message:
            return "", None
        fields = {
            "original_topic": source.topic,
            "original_partition": source.partition,
            "original_offset": source.offset,
        }
        return f" ({source})", fields

    async def _first_retry(self, message: Message) -> None:
        """A retry stage's first try: only a record its own group failed runs (a registration
        of another group consuming the same topic shares the retry topics); others are skipped,
        so committed."""
        group = failed_in(message)
        if group != self.spec.group:
            tp = message.topic_partition
            if tp not in self._others_told:
                self._others_told.add(tp)
                self.log.debug(
                    "records of %s that group %s failed are skipped and committed by group %s's "
                    "retries (first: %s)",
                    tp,
                    group,
                    self.spec.group,
                    message,
                )
            return
        await self._call(message, self.attempt_of(message))

    def _stop_process(self, message: Message, exc: BaseException) -> None:
        request = exit_request(exc)
        also, fields = self.named(message)
        self.log.error(
            "handler %s raised %s for %s%s: stopping the process; the message is not committed, "
            "it will be redelivered",
            self.spec.name,
            request.reason,
            message,
            also,
            extra=fields,
        )
        if self.on_exit is not None:
            self.on_exit(request)

    async def _call(self, message: Message, attempt: int = 1) -> None:
        ctx = Context(
            self.app, self.spec.name, self.log, self.stopping, message=message, attempt=attempt
        )
        await self.handler(message, ctx)

    def _skip_tombstone(self, message: Message, exc: BaseException) -> None:
        """Count a skipped tombstone; say so at DEBUG, once per partition (a compacted topic
        may hold many)."""
        self._count(SKIP_TOMBSTONE, message, exc)
        tp = message.topic_partition
        if tp not in self._tombstones_told:
            self._tombstones_told.add(tp)
            self.log.debug(
                "tombstones of %s are skipped and committed: the payload type of %s does not "
                "admit None (first: %s)",
                tp,
                self.spec.name,
                message,
            )

    def _log_deferral(self, message: Message, signal: Defer, *, first: bool) -> None:
        also, fields = self.named(message)
        self.log.log(
            logging.INFO if first else logging.DEBUG,
            "⏸ %s%s deferred (%s); again in %.3gs",
            message,
            also,
            signal.reason or "no reason given",
            signal.delay,
            extra=fields,
        )

    def _log_failure(
        self, message: Message, exc: BaseException, attempt: int, delay: float
    ) -> None:
        also, fields = self.named(message)
        if isinstance(exc, Retry):
            self.log.info(
                "↻ %s%s attempt %d: retry requested (%s); again in %.3gs",
                message,
                also,
                attempt,
                exc.reason or "no reason given",
                delay,
                extra=fields,
            )
            return
        self.log.warning(
            "✗ %s%s attempt %d failed: %s: %s; retrying in %.3gs",
            message,
            also,
            attempt,
            type(exc).__name__,
            exc,
            delay,
            exc_info=exc if attempt == 1 else None,
            extra=fields,
        )

    def _count(
        self,
        decision: Decision,
        message: Message,
        exc: BaseException,
        fate: DeadLetterFate | None = None,
    ) -> None:
        key = (decision, message.topic, type(exc), fate)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    async def give_up(
        self, message: Message, exc: BaseException, attempt: int, decision: Decision, pause: Pause
    ) -> bool:
        """Skip or dead-letter `message` after `attempt` failed with `exc` (a batch that was
        given up, record by record); False if stopped meanwhile."""
        return await self._give_up(message, exc, attempt, decision, pause)

    async def _give_up(
        self, message: Message, exc: BaseException, attempt: int, decision: Decision, pause: Pause
    ) -> bool:
        """Skip or dead-letter `message`, as `decision` says; False if stopped meanwhile."""
        if decision == SKIP:
            also, fields = self.named(message)
            self.log.warning(
                "⊘ %s%s rejected and skipped: %s: %s",
                message,
                also,
                type(exc).__name__,
                exc,
                extra=fields,
            )
            self._count(decision, message, exc)
            return True
        return await self._dead_letter(message, exc, attempt, decision, pause)

    async def _to_stage(
        self, message: Message, exc: BaseException, attempt: int, decision: Decision, pause: Pause
    ) -> bool:
        """Publish the original of `message` to retry stage `decision.stage`, retrying while the
        broker may yet take it; True once the broker acknowledged it (then `message` is
        finished, so committed), False if stopped meanwhile. A retry record the broker will
        never take (too large, refused) is dead-lettered at once, as ``unretryable``."""
        stages = self.spec.retry_topics
        assert stages is not None
        assert decision.stage is not None
        source = self.original(message)
        also, fields = self.named(message)
        topic = stages.topic(source.topic, decision.stage)
        delay = stages.delays[decision.stage - 1]
        sent_due = 0

        def record() -> tuple[bytes | None, bytes | None, Headers]:
            nonlocal sent_due  # the due time (epoch ms) of the copy sent last, for the log line
            due = round((self.app.clock.now().timestamp() + delay) * 1000)
            sent_due = min(due, LATEST_MS)  # what a clock can wait for
            ours = retry_headers(source, self.spec.group, exc, attempt, sent_due)
            return source.value, source.key, source.headers + ours

        outcome = await self._publish_until_taken(
            message, topic, f"retry topic {topic}", record, pause
        )
        if isinstance(outcome, RecordRefused):
            self.log.error(
                "%s%s cannot go to retry topic %s (%s: %s): dead-lettered instead",
                message,
                also,
                topic,
                type(outcome).__name__,
                outcome,
                extra=fields,
            )
            return await self._dead_letter(message, exc, attempt, DEAD_LETTER_UNRETRYABLE, pause)
        if outcome:
            self._log_staged(message, exc, attempt, topic, sent_due)
            self._count(decision, message, exc)
        return outcome

    def _log_staged(
        self, message: Message, exc: BaseException, attempt: int, topic: str, due_ms: int
    ) -> None:
        when = datetime.fromtimestamp(due_ms / 1000, UTC).isoformat(timespec="milliseconds")
        also, fields = self.named(message)
        if isinstance(exc, Retry):
            self.log.info(
                "↻ %s%s attempt %d: retry requested (%s); sent to %s, due %s",
                message,
                also,
                attempt,
                exc.reason or "no reason given",
                topic,
                when,
                extra=fields,
            )
            return
        self.log.warning(
            "✗ %s%s attempt %d failed: %s: %s; sent to %s, due %s",
            message,
            also,
            attempt,
            type(exc).__name__,
            exc,
            topic,
            when,
            exc_info=exc if attempt == 1 else None,
            extra=fields,
        )

    async def _dead_letter(
        self, message: Message, exc: BaseException, attempt: int, decision: Decision, pause: Pause
    ) -> bool:
        """Write the dead letter of `message`, retrying while the broker may yet take it.

        Returns False if stopped meanwhile. A dead letter the broker will never take (a
        `RecordRefused`) does not hold the partition: the message is skipped, in one ERROR line.
        """
        topic = self.spec.dead_letter
        assert topic is not None
        source = self.original(message)  # a retry record's dead letter names the original
        ours = dead_letter_headers(source, self.spec.group, exc, attempt, decision.reason or "")
        letter = fitting(source, ours, self.broker.max_request_size)
        while True:
            outcome = await self._publish_until_taken(message, topic, topic, letter.record, pause)
            if isinstance(outcome, RecordTooLarge) and not letter.smallest:
                why = f"the broker refused the dead letter as too large: {outcome}"
                letter = dead_letter(source, ours, letter.omits + 1, why)
                continue
            if isinstance(outcome, RecordRefused):
                return self._drop(message, exc, attempt, decision, outcome)
            if outcome:
                self._sent(message, exc, attempt, decision, letter)
            return outcome

    async def _publish_until_taken(
        self,
        message: Message,
        topic: str,
        where: str,
        record: Callable[[], tuple[bytes | None, bytes | None, Headers]],
        pause: Pause,
    ) -> bool | RecordRefused:
        """Publish what `record()` makes (value, key, headers) to `topic` for `message`, again
        with backoff while the broker may yet take it: True once it is acknowledged, False if
        `pause` says to stop meanwhile, or the `RecordRefused` of a record it never will take.
        `where` names the topic in the ERROR line of each failure."""
        failures = 0
        while True:
            value, key, headers = record()
            try:
                await self.broker.publish(topic, value, key=key, headers=headers)
            except RecordRefused as error:
                return error
            except BrokerError as error:
                failures += 1
                delay = self.spec.retry.delay(failures, self.rng)
                also, fields = self.named(message)
                self.log.error(
                    "sending %s%s to %s failed: %s; again in %.3gs",
                    message,
                    also,
                    where,
                    error,
                    delay,
                    extra=fields,
                )
                if not await pause(delay):
                    return False
                continue
            return True

    def _sent(
        self,
        message: Message,
        exc: BaseException,
        attempt: int,
        decision: Decision,
        letter: DeadLetter,
    ) -> None:
        shrunk = ""
        if letter.omits != WHOLE:
            rest = ", key and headers" if letter.smallest else ""
            size = len(message.value or b"")
            shrunk = f" without its value ({size} bytes){rest}: too large"
        also, fields = self.named(message)
        self.log.warning(
            "☠ %s%s %s after %d attempt(s) (%s: %s); sent to %s%s",
            message,
            also,
            decision.reason,
            attempt,
            type(exc).__name__,
            exc,
            self.spec.dead_letter,
            shrunk,
            extra=fields,
        )
        self._count(decision, message, exc, None if letter.omits == WHOLE else VALUE_OMITTED)

    def _drop(
        self,
        message: Message,
        exc: BaseException,
        attempt: int,
        decision: Decision,
        error: BrokerError,
    ) -> bool:
        also, fields = self.named(message)
        self.log.error(
            "☠ %s%s %s after %d attempt(s) (%s: %s); its dead letter can never be written to %s "
            "(%s: %s), so it is skipped: it stays in %s until retention removes it",
            message,
            also,
            decision.reason,
            attempt,
            type(exc).__name__,
            exc,
            self.spec.dead_letter,
            type(error).__name__,
            error,
            message,
            extra=fields,
        )
        self._count(decision, message, exc, DROPPED)
        return True


STOPS_PROCESS = (SystemExit, KeyboardInterrupt)
"""What a handler raises to stop the process."""


def exit_request(exc: BaseException) -> ProcessExit:
    """The stop a handler's SystemExit or KeyboardInterrupt asks for: the SystemExit's code when
    it is a non-zero int, else 1."""
    code = exc.code if isinstance(exc, SystemExit) else None
    reason = (
        f"{type(exc).__name__}({code!r})" if isinstance(exc, SystemExit) else type(exc).__name__
    )
    return ProcessExit(reason, code if isinstance(code, int) and code != 0 else 1)
