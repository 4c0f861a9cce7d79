"""The supervisor: ``taskflow run MODULE:APP --processes N`` runs N ordinary ``taskflow run``s.

One Python process uses one core; N processes of the same app use N. Each child is a plain
``taskflow run`` of the same app with the same options, so consumer groups spread partitions over
the processes and fleet scheduling runs each periodic tick once, exactly as for N replicas. The
supervisor itself only starts, watches and stops processes:

- each child gets ``TASKFLOW_PROCESS_INDEX`` (0 to N-1), which its log lines show (``#1`` after
  the time, or ``"process_index": 1`` in JSON), and runs in its own process group, so a Ctrl-C at
  a terminal reaches the supervisor alone and each child gets it once, forwarded;
- SIGINT, SIGTERM and SIGHUP are forwarded to every child, the second as well as the first: a
  child drains on the first and cancels what is left on the second. A child still running
  `shutdown_timeout` + `kill_grace` seconds after the first is killed (SIGKILL), and the log
  says so;
- a child that exits while no stop was requested is started again after a backoff (1 s doubling
  to 60 s, reset once it has run for longer than that), except one that exits 2: a usage or
  configuration error, which no restart cures, so the others are stopped and the supervisor
  exits 2;
- the exit code is the worst of the children's last exits: 0 clean, 1 unclean or killed by a
  signal, 2 a usage or configuration error;
- a child's stdin is a pipe whose write end only the supervisor holds. When the supervisor dies,
  however it dies (SIGKILL included), the kernel closes that end; the child reads end-of-file and
  stops as if sent SIGTERM, so no child outlives its supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from taskflow.backoff import Backoff
from taskflow.config import quoted, whole_number_text
from taskflow.exceptions import ConfigurationError
from taskflow.logfmt import JsonFormatter
from taskflow.manager import RESTART_BACKOFF
from taskflow.runner import EXIT_CLEAN, EXIT_UNCLEAN, STOP_SIGNALS, early_signal

__all__ = [
    "PROCESSES_CEILING",
    "PROCESS_INDEX_ENV",
    "Child",
    "Supervisor",
    "check_processes",
    "configure_child",
    "default_processes_limit",
    "usable_cpus",
]

logger = logging.getLogger(__name__)

PROCESS_INDEX_ENV = "TASKFLOW_PROCESS_INDEX"
SUPERVISOR_PID_ENV = "TASKFLOW_SUPERVISOR_PID"
EXIT_USAGE = 2  # `taskflow run`'s code for a usage or configuration error
# Past shutdown_timeout a child still cancels (5 s), runs its shutdown hooks, closes the broker
# (at most 10 s) and exits; only one that is still there after all that is killed.
KILL_GRACE = 20.0
# How many children one supervisor starts: by default at most 4 per usable CPU (at least 8), so
# that a slip of the keyboard does not fork the machine to death; an explicit limit can raise
# that up to the ceiling, past which the count is a mistake whatever the machine.
PROCESSES_PER_CPU = 4
PROCESSES_FLOOR = 8
PROCESSES_CEILING = 4096


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: taskset, a container's CPU set)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_processes_limit() -> int:
    """The most children a supervisor starts without an explicit limit."""
    return min(PROCESSES_CEILING, max(PROCESSES_FLOOR, PROCESSES_PER_CPU * usable_cpus()))


def check_processes(processes: int, limit: int | None = None, label: str = "processes") -> None:
    """Refuse a count of children that is not from 1 to `limit` (default: see above).

    Raises:
        ConfigurationError: naming `label` and how to allow more.
    """
    if limit is not None and not 1 <= limit <= PROCESSES_CEILING:
        raise ConfigurationError(f"a process limit is from 1 to {PROCESSES_CEILING}, got {limit}")
    allowed = default_processes_limit() if limit is None else limit
    if processes < 1:
        raise ConfigurationError(f"{label} must be at least 1, got {processes}")
    if processes > allowed:
        why = (
            f"this machine's default ({PROCESSES_PER_CPU} per usable CPU, at least "
            f"{PROCESSES_FLOOR})"
            if limit is None
            else "the process limit given"
        )
        more = (
            f"; pass --processes-limit {processes} (or set TASKFLOW_PROCESSES_LIMIT) if you mean it"
            if processes <= PROCESSES_CEILING
            else f", and no supervisor starts more than {PROCESSES_CEILING}"
        )
        raise ConfigurationError(f"{label} {processes} is more than {allowed}, {why}{more}")


@dataclass(slots=True)
class Child:
    """The supervisor's record of one child process."""

    index: int
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)
    code: int = EXIT_CLEAN  # its last exit, as the supervisor counts it: 0, 1 or 2
    restarts: int = 0
    lifeline: int | None = field(default=None, repr=False)  # the write end of its stdin

    @property
    def pid(self) -> int | None:
        """The process id of its current (or last) run."""
        return None if self.process is None else self.process.pid

    @property
    def alive(self) -> bool:
        """True while its current run has not exited."""
        return self.process is not None and self.process.returncode is None


class Supervisor:
    """Runs `processes` children and keeps them running until a stop; see the module docstring.

    Args:
        command: The command line of the child with the given index.
        processes: How many children run at once.
        shutdown_timeout: Seconds a child may take to drain after the first stop request.
        kill_grace: Seconds past `shutdown_timeout` after which a child still running is killed.
        restart_backoff: Waits before a child that exited on its own is started again.
        env: The children's environment (default: this process's); each also gets
            ``TASKFLOW_PROCESS_INDEX``.
        limit: The most children allowed (default: 4 per usable CPU, at least 8).

    Raises:
        ConfigurationError: for a count of children from none to more than `limit`.
    """

    def __init__(
        self,
        command: Callable[[int], Sequence[str]],
        processes: int,
        *,
        shutdown_timeout: float = 30.0,
        kill_grace: float = KILL_GRACE,
        restart_backoff: Backoff = RESTART_BACKOFF,
        env: Mapping[str, str] | None = None,
        limit: int | None = None,
    ) -> None:
        check_processes(processes, limit)
        self.command = command
        self.children = [Child(index) for index in range(processes)]
        self.shutdown_timeout = shutdown_timeout
        self.kill_grace = kill_grace
        self.restart_backoff = restart_backoff
        self.env = dict(os.environ if env is None else env)
        self._stopping = asyncio.Event()
        self._requests = 0

    # -- stopping --------------------------------------------------------------------------

    @property
    def stop_requested(self) -> bool:
        """True from the first stop request (or signal) on."""
        return self._stopping.is_set()

    def request_stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Forward `sig` to every running child; the first request also ends restarts."""
        self._requests += 1
        live = [child for child in self.children if child.alive]
        if self._requests == 1:
            logger.info(
                "stop requested (%s): forwarding it to %d process(es), at most %gs",
                sig.name,
                len(live),
                self.shutdown_timeout,
            )
            self._stopping.set()
        else:
            logger.warning(
                "stop requested again (%s): forwarding it, the processes cancel what is left",
                sig.name,
            )
        for child in live:
            _send(child, sig)

    def _install_signal_handlers(self) -> Callable[[], None]:
        loop = asyncio.get_running_loop()
        for sig in STOP_SIGNALS:  # forwarded: a child stops on each, as taskflow run does
            loop.add_signal_handler(sig, self.request_stop, sig)
        early = early_signal()  # one that came while the app was imported
        if early is not None:
            loop.call_soon(self.request_stop, early)

        def remove() -> None:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)

        return remove

    # -- running ---------------------------------------------------------------------------

    async def run(self, *, install_signal_handlers: bool = True) -> int:
        """Start every child, keep them running until a stop, and return the exit code."""
        remove = self._install_signal_handlers() if install_signal_handlers else None
        logger.info("supervising %d processes", len(self.children))
        try:
            async with asyncio.TaskGroup() as group:
                kept = [
                    group.create_task(self._keep(child), name=f"process:{child.index}")
                    for child in self.children
                ]
                await self._stopping.wait()
                await self._wait_or_kill(kept)
        finally:
            for child in self.children:  # only after an error of our own: none is left otherwise
                if child.alive:
                    _send(child, signal.SIGKILL)
            if remove is not None:
                remove()
        code = max(child.code for child in self.children)
        if code == EXIT_CLEAN:
            logger.info("all %d processes stopped cleanly", len(self.children))
        else:
            logger.error("processes stopped; exit code %d", code)
        return code

    async def _keep(self, child: Child) -> None:
        """Run `child`, and again after a backoff each time it exits on its own, until a stop."""
        failures = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            if not await self._run_once(child) or self._stopping.is_set():
                return
            if child.code == EXIT_USAGE:
                logger.error(
                    "process #%d (pid %s) exited 2, a usage or configuration error: "
                    "stopping the others",
                    child.index,
                    child.pid,
                )
                self.request_stop()
                return
            ran_long = time.monotonic() - started > self.restart_backoff.maximum
            failures = 1 if ran_long else failures + 1
            delay = self.restart_backoff.delay(failures)
            logger.error(
                "process #%d (pid %s) %s; restarting in %.3gs (restart #%d)",
                child.index,
                child.pid,
                _describe(child),
                delay,
                child.restarts + 1,
            )
            try:
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            except TimeoutError:
                child.restarts += 1
                continue
            return

    async def _run_once(self, child: Child) -> bool:
        """Start `child` and wait for it to exit; False when it could not be started."""
        env = {
            **self.env,
            PROCESS_INDEX_ENV: str(child.index),
            SUPERVISOR_PID_ENV: str(os.getpid()),
        }
        stdin, child.lifeline = os.pipe()  # not inherited: no other child holds this end
        try:
            child.process = await asyncio.create_subprocess_exec(
                *self.command(child.index),
                env=env,
                stdin=stdin,
                process_group=0,  # a terminal's Ctrl-C reaches the supervisor only
            )
        except OSError as exc:
            _cut(child)
            logger.error("process #%d could not be started: %s", child.index, exc)
            child.code = EXIT_UNCLEAN
            self.request_stop()
            return False
        finally:
            os.close(stdin)  # the child has its own copy
        logger.info("process #%d started (pid %d)", child.index, child.process.pid)
        if self._stopping.is_set():  # the stop came while it was being started
            _send(child, signal.SIGTERM)
        try:
            returncode = await child.process.wait()
        finally:
            _cut(child)
        child.code = returncode if returncode in (EXIT_CLEAN, EXIT_USAGE) else EXIT_UNCLEAN
        if self._stopping.is_set():
            log = logger.info if child.code == EXIT_CLEAN else logger.error
            log("process #%d (pid %d) %s", child.index, child.process.pid, _describe(child))
        return True

    async def _wait_or_kill(self, kept: Sequence[asyncio.Task[None]]) -> None:
        """Wait for every child to exit; kill those still running past the deadline."""
        deadline = self.shutdown_timeout + self.kill_grace
        _, pending = await asyncio.wait(kept, timeout=deadline)
        if not pending:
            return
        for child in self.children:
            if child.alive:
                logger.error(
                    "process #%d (pid %s) still running %gs after the stop: killing it",
                    child.index,
                    child.pid,
                    deadline,
                )
                _send(child, signal.SIGKILL)


def _cut(child: Child) -> None:
    """Close the supervisor's end of `child`'s stdin, once it is no longer needed."""
    if child.lifeline is not None:
        os.close(child.lifeline)
        child.lifeline = None


def _send(child: Child, sig: signal.Signals) -> None:
    assert child.process is not None
    with contextlib.suppress(ProcessLookupError):  # it has just exited
        child.process.send_signal(sig)


def _describe(child: Child) -> str:
    """'exited 1' or 'was killed by SIGKILL': how its last run ended."""
    assert child.process is not None
    returncode = child.process.returncode
    assert returncode is not None
    if returncode >= 0:
        return f"exited {returncode}"
    try:
        return f"was killed by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"was killed by signal {-returncode}"


# -- in the child ----------------------------------------------------------------------------


def configure_child() -> None:
    """In a child of a supervisor: label its log lines, and end it when the supervisor dies.

    Does nothing in a process that no supervisor started. Call it after `logfmt.configure`.

    Raises:
        ConfigurationError: when ``TASKFLOW_PROCESS_INDEX`` is not an index a supervisor gives.
    """
    index = process_index()
    if index is None:
        return
    _label_logs(index)
    if SUPERVISOR_PID_ENV in os.environ:
        _stop_when_the_supervisor_dies()


def process_index(environ: Mapping[str, str] | None = None) -> int | None:
    """``TASKFLOW_PROCESS_INDEX``, or None when it is unset or empty.

    Raises:
        ConfigurationError: for anything but a whole number from 0 to the ceiling on processes.
    """
    text = (os.environ if environ is None else environ).get(PROCESS_INDEX_ENV, "").strip()
    if not text:
        return None
    index = whole_number_text(text)
    if index is None or not 0 <= index < PROCESSES_CEILING:
        raise ConfigurationError(
            f"{PROCESS_INDEX_ENV} must be a whole number from 0 to {PROCESSES_CEILING - 1} "
            f"(a supervisor sets it for each process), got {quoted(text)}"
        )
    return index


class _IndexFilter(logging.Filter):
    """Adds `process_index` to each record, so JSON lines carry it as a field."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.process_index = self.index
        return True


class _Labelled(logging.Formatter):
    """A text formatter's lines with ``#<index>`` after the time: ``12:00:01.123 #1 INFO  …``."""

    def __init__(self, inner: logging.Formatter, index: int) -> None:
        super().__init__()
        self.inner = inner
        self.label = f"#{index}"

    def format(self, record: logging.LogRecord) -> str:
        stamp, _, rest = self.inner.format(record).partition(" ")
        return f"{stamp} {self.label} {rest}"


def _label_logs(index: int) -> None:
    for handler in logging.getLogger().handlers:
        handler.addFilter(_IndexFilter(index))
        formatter = handler.formatter or logging.Formatter()
        if not isinstance(formatter, JsonFormatter):
            handler.setFormatter(_Labelled(formatter, index))


def _stop_when_the_supervisor_dies() -> None:
    """Watch stdin, a pipe that only the supervisor can write to: at its end, SIGTERM ourselves.

    A thread rather than the event loop, so that it watches from the start (startup included) and
    needs nothing from the runner; the SIGTERM then takes the usual way to a graceful stop. The
    kernel's PR_SET_PDEATHSIG would fire again for each thread of the supervisor that exits, and a
    second SIGTERM means "cancel now".
    """
    try:
        if not stat.S_ISFIFO(os.fstat(0).st_mode):
            return
    except OSError:
        return

    def watch() -> None:
        try:
            while os.read(0, 1024):  # the supervisor never writes; b"" is the end
                pass
        except OSError:
            return
        logger.warning("the supervisor is gone: stopping")
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="taskflow-supervisor-watch", daemon=True).start()
