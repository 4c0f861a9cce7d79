"""The errors taskflow raises, and the two signals a handler may raise on purpose.

Failures::

    TaskflowError
    ├── ConfigurationError        a bad option, URL, signature or registration
    │   └── HandlerSignatureError a handler taskflow cannot call
    ├── AppLoadError              `module:app` cannot be imported or is not an App
    ├── StateError                not allowed in the current state
    ├── HandlerTimeout            a handler or periodic run outlived its timeout=
    ├── StoreError                Redis (the store) failed or cannot be reached
    ├── BrokerError               the broker failed or cannot be reached
    │   ├── PublishError          a message could not be published
    │   │   └── RecordRefused     the broker will never take this record
    │   │       └── RecordTooLarge  over the producer's max_request_size
    │   └── CommitError           an offset commit was refused (the group moved on)
    ├── StartupInterrupted        a stop signal came before the app was ready
    └── ProcessExit               a handler raised SystemExit or KeyboardInterrupt

Configuration errors are raised before anything starts. Each class below says more.

Control flow (raised by handlers, never by taskflow on its own), kept apart from failures::

    HandlerSignal
    ├── Reject                    a business error: dead-letter or skip, no retry
    │   └── DecodeError           the payload does not decode to the handler's type
    ├── SkipTombstone             skip a tombstone the handler cannot take
    ├── BatchError                which record of a batch failed (batch handlers)
    ├── Retry                     try again later (counts as an attempt)
    └── Defer                     not now: try later, without counting an attempt
"""

from __future__ import annotations

__all__ = [
    "AppLoadError",
    "BatchError",
    "BrokerError",
    "CommitError",
    "ConfigurationError",
    "DecodeError",
    "Defer",
    "HandlerSignal",
    "HandlerSignatureError",
    "HandlerTimeout",
    "ProcessExit",
    "PublishError",
    "RecordRefused",
    "RecordTooLarge",
    "Reject",
    "Retry",
    "SkipTombstone",
    "StartupInterrupted",
    "StateError",
    "StoreError",
    "TaskflowError",
]


class TaskflowError(Exception):
    """Base class of every failure taskflow raises."""


class ConfigurationError(TaskflowError, ValueError):
    """An option, URL or registration is invalid; raised before anything starts."""


class HandlerSignatureError(ConfigurationError, TypeError):
    """A handler's signature is one taskflow cannot serve."""


class AppLoadError(TaskflowError):
    """A `module:attribute` reference does not lead to an App."""


class StateError(TaskflowError, RuntimeError):
    """An operation is not allowed in the current state (for example, publish before start)."""


class HandlerTimeout(TaskflowError):
    """A handler or periodic run went past its `timeout=` and was cancelled; counts as a failure."""


class StoreError(TaskflowError):
    """Redis, taskflow's store for idempotency, shared rate limits and fleet schedules, failed."""


class BrokerError(TaskflowError):
    """The broker failed or cannot be reached."""


class PublishError(BrokerError):
    """A message could not be published."""


class RecordRefused(PublishError):
    """The broker will never accept this record as it is, so publishing it again is useless."""


class RecordTooLarge(RecordRefused):
    """The record is larger than the producer's `max_request_size` or the broker's own limit."""


class StartupInterrupted(TaskflowError):
    """A stop signal came before the app was ready; what start-up had opened is closed."""


class ProcessExit(TaskflowError):
    """A handler raised `SystemExit` or `KeyboardInterrupt`: its worker drained and the process
    stops gracefully, exiting with `code`.

    Args:
        reason: What the handler raised, for the log.
        code: The process's exit code.
    """

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class HandlerSignal(Exception):
    """Base class of the exceptions a handler raises on purpose to steer what happens next."""


class Reject(HandlerSignal):
    """The message is bad for business reasons: never retry it.

    It goes to the dead-letter topic when one is configured, else it is logged and skipped.
    """


class DecodeError(Reject):
    """The payload cannot be decoded into the type the handler asks for."""


class SkipTombstone(HandlerSignal):
    """The record is a tombstone (its value is null) and the handler's payload type does not
    admit None: skip it and commit it, without a retry, a dead letter or a warning.

    The payload decoders raise it, so that only a handler annotated ``X | None`` (or taking the
    `Message`) sees tombstones.
    """


class BatchError(HandlerSignal):
    """Record `index` of the batch failed with `error`; the records before it are done.

    A batch handler raises it to say how far it got: the records before `index` are finished
    and committed, record `index` goes through the error policy on its own (retried alone,
    dead-lettered or rejected, as `error` says), and the records after it run again.

    Args:
        index: The position in the batch (0 for the first record) of the record that failed.
        error: What that record failed with.

    Example:
        ```python
        @app.consume("events", batch=500)
        async def store(events: list[dict], ctx: Context) -> None:
            for index, event in enumerate(events):
                try:
                    await ctx.state.db.insert(event)
                except Exception as exc:
                    raise BatchError(index, exc) from exc
        ```
    """

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(f"record {index} of the batch failed: {type(error).__name__}: {error}")
        self.index = index
        self.error = error


class Retry(HandlerSignal):
    """Try this message again after the backoff, without logging a traceback.

    Args:
        reason: A short text for the log line.
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class Defer(HandlerSignal):
    """Not now: leave the message unfinished and run it again after `delay` seconds.

    Unlike a failure or `Retry`, it does not count as an attempt, so it never sends a message to
    the dead-letter topic, and it is logged without a traceback. Middleware raises it when a
    message cannot run yet through no fault of its own: its store is unreachable, another
    replica holds its claim, or shutdown began while it waited. On shutdown the message is left
    unfinished, so it is not committed and comes again.

    Args:
        reason: A short text for the log line.
        delay: Seconds to wait before trying again.
    """

    def __init__(self, reason: str = "", delay: float = 1.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class CommitError(BrokerError):
    """An offset commit was refused, usually because the group rebalanced meanwhile."""
