"""Running one message through its handler under the error policy of the registration.

The policy (`taskflow.policy`): a handler that raises is retried with backoff and
its partition (or key) waits meanwhile; a `Reject` (or an exception in `reject_on`, or a payload
that cannot be decoded) is never retried; it goes to the dead-letter topic when there is one, else
it is logged and skipped. A message that exhausts `max_attempts` goes to the dead-letter topic.
Cancellation, KeyboardInterrupt, SystemExit and MemoryError propagate and are never dead-lettered.

The Processor counts what it decided (`outcomes`), by topic and exception type, for the observable
metrics; that happens on the failure path only.
"""

from __future__ import annotations

import asyncio
import logging
import random
import traceback
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from taskflow.context import Context, WorkerLogger
from taskflow.exceptions import BrokerError, Defer, Retry
from taskflow.handler import ignores_ctx
from taskflow.policy import DEFER, RAISE, RETRY, SKIP, Decision, ErrorPolicy

if TYPE_CHECKING:
    from taskflow.app import App
    from taskflow.brokers.base import Broker
    from taskflow.handler import Handler
    from taskflow.message import Headers, Message
    from taskflow.specs import ConsumerSpec

__all__ = ["Processor", "dead_letter_headers"]

logger = logging.getLogger("taskflow.consumer")

HEADER_PREFIX = "taskflow-"
_TRACEBACK_LIMIT = 2000

# Wait up to `seconds`; return False when the wait was cut short because the work must stop.
Pause = Callable[[float], Awaitable[bool]]
# What was decided after a failed attempt (not DEFER), on which topic, for which exception type.
Outcome = tuple[Decision, str, type[BaseException]]


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
        self.outcomes: dict[Outcome, int] = {}
        # A handler that never reads its Context can share one instead of getting one per message.
        self.shared_ctx = Context(app, spec.name, log, stopping) if ignores_ctx(handler) else None
        # Then a lane may call the handler itself. (A timeout is a middleware layer, so a handler
        # with one never gets here: see `taskflow.middleware.timeout`.)
        self.direct = self.shared_ctx is not None

    def first_try(self, message: Message) -> Awaitable[None]:
        """Start the first attempt at `message`: the fast path, the handler and nothing else.

        If it raises, hand the exception to `recover`.
        """
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

    async def recover(self, message: Message, exc: Exception, pause: Pause) -> bool:
        """Apply the error policy after attempt 1 raised `exc`; retry until finished or given up.

        A `Defer` waits its delay and runs the message again without counting an attempt.

        Returns True once the message is finished (handled, skipped or dead-lettered), False
        when `pause` says to stop waiting (the partition is closing): then it is not finished.
        """
        attempt, deferred = 1, False
        while True:
            decision = self.policy.after_failure(exc, attempt)
            if decision == RAISE:
                raise exc
            if decision == DEFER:
                assert isinstance(exc, Defer)
                self._log_deferral(message, exc, first=not deferred)
                deferred = True
                if not await pause(exc.delay):
                    return False
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
            except Exception as failure:
                exc = failure
            else:
                return True

    async def _call(self, message: Message, attempt: int = 1) -> None:
        ctx = Context(
            self.app, self.spec.name, self.log, self.stopping, message=message, attempt=attempt
        )
        await self.handler(message, ctx)

    def _log_deferral(self, message: Message, signal: Defer, *, first: bool) -> None:
        self.log.log(
            logging.INFO if first else logging.DEBUG,
            "⏸ %s deferred (%s); again in %.3gs",
            message,
            signal.reason or "no reason given",
            signal.delay,
        )

    def _log_failure(self, message: Message, exc: Exception, attempt: int, delay: float) -> None:
        if isinstance(exc, Retry):
            self.log.info(
                "↻ %s attempt %d: retry requested (%s); again in %.3gs",
                message,
                attempt,
                exc.reason or "no reason given",
                delay,
            )
            return
        self.log.warning(
            "✗ %s attempt %d failed: %s: %s; retrying in %.3gs",
            message,
            attempt,
            type(exc).__name__,
            exc,
            delay,
            exc_info=exc if attempt == 1 else None,
        )

    def _count(self, decision: Decision, message: Message, exc: BaseException) -> None:
        key = (decision, message.topic, type(exc))
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    async def _give_up(
        self, message: Message, exc: BaseException, attempt: int, decision: Decision, pause: Pause
    ) -> bool:
        """Skip or dead-letter `message`, as `decision` says; False if stopped meanwhile."""
        if decision == SKIP:
            self.log.warning("⊘ %s rejected and skipped: %s: %s", message, type(exc).__name__, exc)
        elif not await self._dead_letter(message, exc, attempt, decision.reason or "", pause):
            return False
        self._count(decision, message, exc)
        return True

    async def _dead_letter(
        self, message: Message, exc: BaseException, attempt: int, reason: str, pause: Pause
    ) -> bool:
        topic = self.spec.dead_letter
        assert topic is not None
        headers = message.headers + dead_letter_headers(
            message, self.spec.group, exc, attempt, reason
        )
        failures = 0
        while True:
            try:
                await self.broker.publish(topic, message.value, key=message.key, headers=headers)
            except BrokerError as error:
                failures += 1
                delay = self.spec.retry.delay(failures, self.rng)
                self.log.error(
                    "dead-lettering %s to %s failed: %s; again in %.3gs",
                    message,
                    topic,
                    error,
                    delay,
                )
                if not await pause(delay):
                    return False
                continue
            self.log.warning(
                "☠ %s %s after %d attempt(s) (%s: %s); sent to %s",
                message,
                reason,
                attempt,
                type(exc).__name__,
                exc,
                topic,
            )
            return True


def dead_letter_headers(
    message: Message, group: str, exc: BaseException, attempts: int, reason: str
) -> Headers:
    """The `taskflow-` headers that say where a dead letter came from and why."""
    fields = {
        "original-topic": message.topic,
        "original-partition": str(message.partition),
        "original-offset": str(message.offset),
        "original-timestamp": str(message.timestamp_ms),
        "consumer-group": group,
        "attempts": str(attempts),
        "reason": reason,
        "exception-type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "exception-message": str(exc)[:_TRACEBACK_LIMIT],
        "traceback": _short_traceback(exc),
    }
    return tuple((HEADER_PREFIX + name, value.encode("utf-8")) for name, value in fields.items())


def _short_traceback(exc: BaseException) -> str:
    lines = traceback.format_exception(exc, limit=-5)
    text = "".join(lines)
    return text if len(text) <= _TRACEBACK_LIMIT else "…" + text[-_TRACEBACK_LIMIT:]
