"""The handler timeout as a built-in middleware, and the watchdog that finds stuck handlers.

`Timeout` is the innermost built-in, so it times the registration's own middleware and the
handler, not the wait for a rate limit or an idempotency claim; and the layers outside it
(idempotency, telemetry) see its `HandlerTimeout` like any other failure: the claim is released,
the span says ``error.type=taskflow.exceptions.HandlerTimeout``, and the error policy retries it.

A `Watchdog` knows every timed call running now. A call still running `grace` seconds after its
timeout cancelled it is *stuck*: it swallows the cancellation, or waits on something that ignores
it. The operations endpoint's /healthz fails while one is.

A plain `def` handler cut off by its timeout keeps running in its thread (a thread cannot be
stopped). The watchdog also watches each timed registration's threads (`taskflow.threads`): their
abandoned calls are its *stuck threads*, and a registration whose stuck threads reached their
bound is *blocked*: its next call waits for one of them to end, before its timeout starts, so the
wait is no attempt. /healthz fails while one is blocked, naming it.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from taskflow.handler import call_with_timeout

if TYPE_CHECKING:
    from taskflow.context import Context
    from taskflow.handler import Handler, Job
    from taskflow.threads import HandlerThreads

logger = logging.getLogger("taskflow")

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
        self.threads: dict[str, HandlerThreads] = {}  # per worker, for `def` handlers
        self._ids = itertools.count()

    def watch(self, worker: str, threads: HandlerThreads) -> None:
        """Watch the threads of `worker`'s `def` handler."""
        self.threads[worker] = threads

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

    def stuck_threads(self) -> dict[str, int]:
        """Per watched worker, its abandoned `def` calls still running in their threads."""
        return {worker: len(threads.stuck) for worker, threads in self.threads.copy().items()}

    def problems(self, now: float) -> list[str]:
        """Why the handlers are unhealthy at `now` (monotonic): stuck calls, blocked threads."""
        reasons = [
            f"{a.worker}: the handler for {a.job} has run for {now - a.started:.1f}s, "
            f"past its timeout of {a.timeout:g}s"
            for a in self.stuck(now)
        ]
        for worker, threads in self.threads.copy().items():
            stuck = threads.stuck
            if threads.blocked and stuck:
                reasons.append(
                    f"{worker}: {len(stuck)} handler thread(s) still running past their timeout "
                    f"(the oldest for {stuck[0].job}, {now - stuck[0].started:.1f}s); "
                    "its next call waits for one to end"
                )
        return reasons


class Timeout:
    """Cancels the rest of the stack after `seconds` and raises `HandlerTimeout`.

    Args:
        next: The next handler.
        seconds: The registration's `timeout=`.
        watchdog: Where running calls are noted, when the app has one.
        worker: The registration's name, for the watchdog.
        threads: The threads of the registration's `def` handler: a call waits for room in them
            before its time starts.
    """

    def __init__(
        self,
        next: Handler,
        *,
        seconds: float,
        watchdog: Watchdog | None = None,
        worker: str = "",
        threads: HandlerThreads | None = None,
    ) -> None:
        self.next = next
        self.seconds = seconds
        self.watchdog = watchdog
        self.worker = worker
        self.threads = threads
        if watchdog is not None and threads is not None:
            watchdog.watch(worker, threads)

    async def __call__(self, job: Job, ctx: Context) -> None:
        if self.threads is not None and self.threads.blocked:
            await self._wait_for_room(job, self.threads)
        if self.watchdog is None:
            await call_with_timeout(self.next, job, ctx, self.seconds)
            return
        token = self.watchdog.start(Attempt(self.worker, job, time.monotonic(), self.seconds))
        try:
            await call_with_timeout(self.next, job, ctx, self.seconds)
        finally:
            self.watchdog.end(token)

    async def _wait_for_room(self, job: Job, threads: HandlerThreads) -> None:
        stuck = threads.stuck
        logger.warning(
            "%s: %d handler thread(s) still running past their timeout (the oldest for %s); "
            "%s waits for one to end",
            self.worker,
            len(stuck),
            stuck[0].job if stuck else "?",
            job,
        )
        await threads.room()
        logger.info("%s: a handler thread ended; %s goes ahead", self.worker, job)
