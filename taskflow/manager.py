"""The Manager: starts workers, restarts the ones that crash, and stops them all gracefully.

Each worker runs under a supervisor task. A worker whose `start` raises is logged with its traceback
and started again after a backoff (1 s doubling to 60 s, reset once it has run for longer than the
longest backoff); the others keep running. Shutdown, on SIGINT/SIGTERM or `request_stop()`:

1. `stopping` is set (handlers see `ctx.stopping`) and each worker's `stop()` is called, last
   registered first;
2. workers finish what they are doing, all within `shutdown_timeout` seconds in total;
3. whatever is still running then is cancelled, and each cancelled worker is logged; a worker
   that has not ended `CANCEL_GRACE` seconds later (its code ignores the cancellation) is given up
   on, named in the log, and left behind;
4. `run()` returns a `ShutdownReport`: clean, or which workers were cancelled or failed.

A worker whose `start` raises `ProcessExit` (a handler raised SystemExit or KeyboardInterrupt) has
drained itself; the Manager stops the others as on a signal, and the report carries the exit code.

`stop_requested` is true from the moment a stop is requested (readiness turns it into a 503 at
once); the `before_stop` hooks run, in order and awaited when they return an awaitable, after
`stopping` is set and before the first worker is asked to stop.

A second signal skips the wait and cancels at once.

A worker's state (`Manager.statuses[name].state`) moves through:

- ``stopped``: registered and not run yet, or `start` has returned (also after a cancellation);
- ``starting``: `run()` has begun and the worker's `start` has not been called yet;
- ``running``: `start` is running;
- ``restarting``: `start` raised; the worker waits out its backoff before `start` is called again;
- ``stopping``: shutdown began and the worker was asked to `stop`;
- ``failed``: `start` raised during shutdown, so it is not restarted.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from taskflow.backoff import Backoff
from taskflow.crew import Crew
from taskflow.exceptions import ConfigurationError, ProcessExit, StateError
from taskflow.types import Worker, WorkerState

__all__ = ["Manager", "ShutdownReport", "Supervision"]

logger = logging.getLogger(__name__)

RESTART_BACKOFF = Backoff(initial=1.0, maximum=60.0, multiplier=2.0, jitter=0.0)
CANCEL_GRACE = 5.0  # how long a cancelled worker may take to commit and close


@dataclass(slots=True)
class Supervision:
    """The Manager's record of one worker."""

    worker: Worker
    state: WorkerState = WorkerState.STOPPED
    restarts: int = 0
    last_error: str | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ShutdownReport:
    """How shutdown went."""

    cancelled: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    signal: str | None = None
    exit_code: int | None = None
    """The code a handler asked the process to exit with (SystemExit, KeyboardInterrupt)."""

    @property
    def clean(self) -> bool:
        """True when every worker finished by itself: none cancelled, none failed while stopping."""
        return not self.cancelled and not self.failed


class Manager:
    """Owns a set of workers for one run.

    Args:
        shutdown_timeout: Seconds that all workers together get to finish after shutdown begins.
        restart_backoff: Waits between restarts of a crashing worker.
        stopping: The event set when shutdown begins (shared with handlers as `ctx.stopping`).
    """

    def __init__(
        self,
        *,
        shutdown_timeout: float = 30.0,
        restart_backoff: Backoff = RESTART_BACKOFF,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.shutdown_timeout = shutdown_timeout
        self.restart_backoff = restart_backoff
        self.stopping = stopping or asyncio.Event()
        self.statuses: dict[str, Supervision] = {}
        # Called once shutdown begins, before workers are asked to stop; awaited if awaitable.
        self.before_stop: list[Callable[[], object]] = []
        self._stop_requested = asyncio.Event()
        self._force = asyncio.Event()
        self._signal: str | None = None
        self._exit_code: int | None = None
        self._running = False

    def register(self, worker: Worker) -> None:
        """Add a worker; its name must be unique."""
        if not isinstance(worker, Worker):
            raise ConfigurationError(f"{worker!r} has no name, async start() and async stop()")
        if worker.name in self.statuses:
            raise ConfigurationError(f"a worker named {worker.name!r} is already registered")
        self.statuses[worker.name] = Supervision(worker)

    # -- stopping --------------------------------------------------------------------------

    @property
    def stop_requested(self) -> bool:
        """True from the first stop request (or signal) on."""
        return self._stop_requested.is_set()

    def request_stop(self, reason: str | None = None) -> None:
        """Begin graceful shutdown; a second request cancels what is left at once."""
        if self._stop_requested.is_set():
            if not self._force.is_set():
                logger.warning("second stop request (%s): cancelling now", reason or "stop")
                self._force.set()
            return
        self._signal = reason
        logger.info(
            "stop requested (%s): finishing in-flight work, at most %gs",
            reason or "stop",
            self.shutdown_timeout,
        )
        self._stop_requested.set()

    # -- running ---------------------------------------------------------------------------

    async def run(self) -> ShutdownReport:
        """Start every worker, wait for a stop request, then shut down gracefully.

        Raises:
            StateError: when this Manager is running already (`taskflow.running` runs it).
        """
        if self._running:
            raise StateError(
                "this Manager is running its workers already: taskflow.running() runs them; "
                "use taskflow.runner.open_runtime() to run them yourself"
            )
        self._running = True
        try:
            return await self._run()
        finally:
            self._running = False

    async def _run(self) -> ShutdownReport:
        cancelled: tuple[str, ...] = ()
        if not self._stop_requested.is_set():
            # A Crew, not a TaskGroup: a worker that ignores its cancellation is left behind.
            supervisors, grace = Crew(), CANCEL_GRACE
            try:
                for status in self.statuses.values():
                    status.state = WorkerState.STARTING
                    status.task = supervisors.create_task(
                        self._supervise(status), name=f"worker:{status.worker.name}"
                    )
                await self._stop_requested.wait()
                cancelled = await self._shutdown()
                grace = 0  # the shutdown waited for them already
            finally:
                await supervisors.close(grace)
            if supervisors.failure is not None:
                raise supervisors.failure
        failed = tuple(
            name for name, status in self.statuses.items() if status.state is WorkerState.FAILED
        )
        return ShutdownReport(cancelled, failed, self._signal, self._exit_code)

    async def _supervise(self, status: Supervision) -> None:
        worker, failures = status.worker, 0
        while True:
            started = time.monotonic()
            status.state = WorkerState.RUNNING
            try:
                await worker.start()
            except ProcessExit as request:
                status.state = WorkerState.STOPPED
                if self._exit_code is None:
                    self._exit_code = request.code
                self.request_stop(f"{worker.name} raised {request.reason}")
                return
            except Exception as exc:
                status.last_error = f"{type(exc).__name__}: {exc}"
                if self._stop_requested.is_set():
                    status.state = WorkerState.FAILED
                    logger.exception("worker %s failed while stopping", worker.name)
                    return
                ran_long = time.monotonic() - started > self.restart_backoff.maximum
                failures = 1 if ran_long else failures + 1
                delay = self.restart_backoff.delay(failures)
                status.state = WorkerState.RESTARTING
                logger.exception(
                    "worker %s crashed; restarting in %.3gs (restart #%d)",
                    worker.name,
                    delay,
                    status.restarts + 1,
                )
                if not await self._restart_after(status, delay):
                    return
                continue
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # SystemExit, KeyboardInterrupt or a group of them
                status.state = WorkerState.FAILED
                status.last_error = f"{type(exc).__name__}: {exc}"
                logger.critical("worker %s raised %s: stopping", worker.name, type(exc).__name__)
                self.request_stop(f"{worker.name} raised {type(exc).__name__}")
                return
            status.state = WorkerState.STOPPED
            if not self._stop_requested.is_set():
                logger.info("worker %s finished on its own", worker.name)
            return

    async def _restart_after(self, status: Supervision, delay: float) -> bool:
        try:
            async with asyncio.timeout(delay):
                await self._stop_requested.wait()
        except TimeoutError:
            status.restarts += 1
            return True
        status.state = WorkerState.STOPPED
        return False

    async def _shutdown(self) -> tuple[str, ...]:
        deadline = time.monotonic() + self.shutdown_timeout
        self.stopping.set()
        for hook in self.before_stop:
            result = hook()
            if inspect.isawaitable(result):
                await result
        for status in reversed(self.statuses.values()):
            if self._force.is_set():
                break
            await self._ask_to_stop(status, deadline)
        pending = {s.task for s in self.statuses.values() if s.task and not s.task.done()}
        if pending:
            await self._wait_or_force(pending, deadline)
        left = [s for s in self.statuses.values() if s.task and not s.task.done()]
        why = (
            "a second stop request came"
            if self._force.is_set()
            else f"it did not finish within {self.shutdown_timeout:g}s"
        )
        for status in left:
            logger.error("cancelling worker %s: %s", status.worker.name, why)
            assert status.task is not None
            status.task.cancel()
        if left:
            await self._wait_cancelled(left)
        for status in self.statuses.values():
            if status.state is not WorkerState.FAILED:
                status.state = WorkerState.STOPPED
        return tuple(s.worker.name for s in left)

    async def _wait_cancelled(self, left: list[Supervision]) -> None:
        """Give cancelled workers `CANCEL_GRACE` to commit and close; name those that do not end."""
        tasks = {s.task for s in left if s.task}
        await asyncio.wait(tasks, timeout=CANCEL_GRACE)
        for status in left:
            if status.task is not None and not status.task.done():
                logger.error(
                    "abandoned worker %s: it ignored its cancellation for %gs",
                    status.worker.name,
                    CANCEL_GRACE,
                )

    async def _ask_to_stop(self, status: Supervision, deadline: float) -> None:
        if status.task is None or status.task.done():
            return
        status.state = WorkerState.STOPPING
        call = asyncio.ensure_future(status.worker.stop())
        if not await self._wait_or_force({call}, deadline):
            call.cancel()
            logger.error("worker %s: stop() did not return in time", status.worker.name)
        elif (error := call.exception()) is not None:
            logger.error("worker %s: stop() failed", status.worker.name, exc_info=error)

    async def _wait_or_force(self, work: Collection[asyncio.Future[None]], deadline: float) -> bool:
        """Wait for all of `work` until the deadline or a second stop request; True if it ended."""
        everything = asyncio.ensure_future(asyncio.wait(work))
        forced = asyncio.ensure_future(self._force.wait())
        try:
            await asyncio.wait(
                {everything, forced},
                timeout=max(deadline - time.monotonic(), 0),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            everything.cancel()
            forced.cancel()
        return all(future.done() for future in work)
