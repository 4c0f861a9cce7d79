"""The error policy: what happens to a message after an attempt at it fails. Pure logic, no I/O.

One decision, used by the consumer worker (which acts on it) and by the telemetry middleware (which
records it), so the two can never disagree:

- cancellation, KeyboardInterrupt, SystemExit and MemoryError propagate (`RAISE`); any other
  `BaseException` is a failure like an `Exception`;
- a `Defer` waits and runs the message again without counting an attempt (`DEFER`);
- a `SkipTombstone` (a tombstone for a handler whose payload type does not admit None) is skipped
  and committed, never retried nor dead-lettered (`SKIP_TOMBSTONE`);
- a `Reject`, an exception in `reject_on` or a `DecodeError` is never retried: it goes to the
  dead-letter topic when there is one (`DEAD_LETTER_REJECTED`), else it is skipped (`SKIP`);
- any other failure is retried (`RETRY`), until `max_attempts` when there is a dead-letter topic
  (`DEAD_LETTER_EXHAUSTED`). Without one, a message is retried until it succeeds;
- with retry topics, a failure (an explicit `Retry` too) after attempt n goes to retry stage n
  (`retry_stage(n)`, action ``retry_topic``) while there is one, and after the last stage to the
  dead-letter topic (`DEAD_LETTER_EXHAUSTED`): each stage is one attempt, so with two stages the
  third failure is the last.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from taskflow.exceptions import Defer, Reject, SkipTombstone

if TYPE_CHECKING:
    from taskflow.specs import ConsumerSpec

__all__ = [
    "DEAD_LETTER_EXHAUSTED",
    "DEAD_LETTER_REJECTED",
    "DEAD_LETTER_UNRETRYABLE",
    "DEFER",
    "RAISE",
    "RETRY",
    "SKIP",
    "SKIP_TOMBSTONE",
    "Decision",
    "ErrorPolicy",
    "retry_stage",
]

PROPAGATE = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError)
"""What the error policy never handles: it propagates."""

Action = Literal["retry", "retry_topic", "defer", "skip", "skip_tombstone", "dead_letter", "raise"]
DeadLetterReason = Literal["rejected", "exhausted", "unretryable"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to a message after a failed attempt.

    Attributes:
        action: ``retry`` (in place), ``retry_topic`` (through a retry topic), ``defer``,
            ``skip`` (rejected without a dead-letter topic), ``skip_tombstone`` (a tombstone
            the handler does not take), ``dead_letter`` or ``raise`` (the exception
            propagates).
        reason: For ``dead_letter``, why: ``rejected``, ``exhausted`` or ``unretryable`` (a
            retry record the broker refused; the `taskflow-reason` header of the dead letter).
        stage: For ``retry_topic``, the retry stage the message goes to (1 for the first).
    """

    action: Action
    reason: DeadLetterReason | None = None
    stage: int | None = None


RETRY: Final = Decision("retry")
DEFER: Final = Decision("defer")
SKIP: Final = Decision("skip")
SKIP_TOMBSTONE: Final = Decision("skip_tombstone")
RAISE: Final = Decision("raise")
DEAD_LETTER_REJECTED: Final = Decision("dead_letter", "rejected")
DEAD_LETTER_EXHAUSTED: Final = Decision("dead_letter", "exhausted")
DEAD_LETTER_UNRETRYABLE: Final = Decision("dead_letter", "unretryable")


def retry_stage(stage: int) -> Decision:
    """The decision to send a message to retry stage `stage` (1 for the first)."""
    return Decision("retry_topic", stage=stage)


@dataclass(frozen=True, slots=True)
class ErrorPolicy:
    """The error policy of one consumer registration.

    Attributes:
        reject_on: Exception types never retried (`Reject` and the registration's `reject_on`).
        dead_letter: The dead-letter topic, or None.
        max_attempts: Attempts before a failing message is dead-lettered (with a topic).
        stages: Retry stages (retry topics) a failing message goes through; 0 retries in place.
    """

    reject_on: tuple[type[BaseException], ...] = (Reject,)
    dead_letter: str | None = None
    max_attempts: int = 1
    stages: int = 0

    @classmethod
    def of(cls, spec: ConsumerSpec) -> ErrorPolicy:
        """The policy a consumer registration asks for."""
        stages = len(spec.retry_topics) if spec.retry_topics is not None else 0
        return cls((Reject, *spec.reject_on), spec.dead_letter, spec.max_attempts or 1, stages)

    def after_failure(self, exc: BaseException, attempt: int) -> Decision:
        """What happens after attempt number `attempt` (1 for the first) raised `exc`."""
        if isinstance(exc, PROPAGATE):
            return RAISE
        if isinstance(exc, Defer):
            return DEFER
        if isinstance(exc, SkipTombstone):  # before reject_on, which may name any Exception
            return SKIP_TOMBSTONE
        if isinstance(exc, self.reject_on):
            return DEAD_LETTER_REJECTED if self.dead_letter else SKIP
        if self.stages:
            return retry_stage(attempt) if attempt <= self.stages else DEAD_LETTER_EXHAUSTED
        if self.dead_letter and attempt >= self.max_attempts:
            return DEAD_LETTER_EXHAUSTED
        return RETRY
