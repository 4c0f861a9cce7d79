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
  (`DEAD_LETTER_EXHAUSTED`). Without one, a message is retried until it succeeds.
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
    "DEFER",
    "RAISE",
    "RETRY",
    "SKIP",
    "SKIP_TOMBSTONE",
    "Decision",
    "ErrorPolicy",
]

PROPAGATE = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit, MemoryError)
"""What the error policy never handles: it propagates."""

Action = Literal["retry", "defer", "skip", "skip_tombstone", "dead_letter", "raise"]
DeadLetterReason = Literal["rejected", "exhausted"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What happens to a message after a failed attempt.

    Attributes:
        action: ``retry``, ``defer``, ``skip`` (rejected without a dead-letter topic),
            ``skip_tombstone`` (a tombstone the handler does not take), ``dead_letter`` or
            ``raise`` (the exception propagates).
        reason: For ``dead_letter``, why: ``rejected`` or ``exhausted`` (the `taskflow-reason`
            header of the dead letter).
    """

    action: Action
    reason: DeadLetterReason | None = None


RETRY: Final = Decision("retry")
DEFER: Final = Decision("defer")
SKIP: Final = Decision("skip")
SKIP_TOMBSTONE: Final = Decision("skip_tombstone")
RAISE: Final = Decision("raise")
DEAD_LETTER_REJECTED: Final = Decision("dead_letter", "rejected")
DEAD_LETTER_EXHAUSTED: Final = Decision("dead_letter", "exhausted")


@dataclass(frozen=True, slots=True)
class ErrorPolicy:
    """The error policy of one consumer registration.

    Attributes:
        reject_on: Exception types never retried (`Reject` and the registration's `reject_on`).
        dead_letter: The dead-letter topic, or None.
        max_attempts: Attempts before a failing message is dead-lettered (with a topic).
    """

    reject_on: tuple[type[BaseException], ...] = (Reject,)
    dead_letter: str | None = None
    max_attempts: int = 1

    @classmethod
    def of(cls, spec: ConsumerSpec) -> ErrorPolicy:
        """The policy a consumer registration asks for."""
        return cls((Reject, *spec.reject_on), spec.dead_letter, spec.max_attempts or 1)

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
        if self.dead_letter and attempt >= self.max_attempts:
            return DEAD_LETTER_EXHAUSTED
        return RETRY
