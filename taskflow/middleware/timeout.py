"""The handler timeout as a built-in middleware, and the watchdog that finds stuck handlers.

`Timeout` is the innermost built-in, so it times the registration's own middleware and the
handler, not the wait for a rate limit or an idempotency claim; and the layers outside it
(idempotency, telemetry) see its `HandlerTimeout` like any other failure: the claim is released,
the span says ``error.type=taskflow.exceptions.HandlerTimeout``, and the error policy retries it.

A `Watchdog` knows every timed call running now. A call still running `grace` seconds after its
timeout cancelled it is *stuck*: it swallows the cancellation, or waits on something that ignores
it. The operations endpoint's /healthz fails while one is.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskflow.handler import call_with_timeout

if TYPE_CHECKING:
    from taskflow.context import Context
    from taskflow.handler import Handler, Job

__all__ = ["STUCK_GRACE", "Attempt", "Timeout", "Watchdog"]

STUCK_GRACE = 5.0
"""Seconds a handler cancelled by its timeout may take to end before it counts as stuck."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One timed handler call in progress."""

    worker: str
    job: Job
    started: float  # time.monotonic()
    timeout: float


class Watchdog:
    """Every timed handler call running now, to find the stuck ones.

    Args:
        grace: Seconds a cancelled handler may take to end.
    """

    def __init__(self, *, grace: float = STUCK_GRACE) -> None:
        self.grace = grace
        self.attempts: dict[int, Attempt] = {}
        self._ids = itertools.count()

    def start(self, attempt: Attempt) -> int:
        """Note a call that starts; returns the token that `end` takes."""
        token = next(self._ids)
        self.attempts[token] = attempt
        return token

    def end(self, token: int) -> None:
        """Note that the call of `token` ended."""
        del self.attempts[token]

    def stuck(self, now: float) -> list[Attempt]:
        """The calls running for longer than their timeout plus the grace, at `now` (monotonic)."""
        return [a for a in self.attempts.values() if now - a.started > a.timeout + self.grace]


class Timeout:
    """Cancels the rest of the stack after `seconds` and raises `HandlerTimeout`.

    Args:
        app: The next handler.
        seconds: The registration's `timeout=`.
        watchdog: Where running calls are noted, when the app has one.
        worker: The registration's name, for the watchdog.
    """

    def __init__(
        self, app: Handler, *, seconds: float, watchdog: Watchdog | None = None, worker: str = ""
    ) -> None:
        self.app = app
        self.seconds = seconds
        self.watchdog = watchdog
        self.worker = worker

    async def __call__(self, job: Job, ctx: Context) -> None:
        if self.watchdog is None:
            await call_with_timeout(self.app, job, ctx, self.seconds)
            return
        token = self.watchdog.start(Attempt(self.worker, job, time.monotonic(), self.seconds))
        try:
            await call_with_timeout(self.app, job, ctx, self.seconds)
        finally:
            self.watchdog.end(token)
