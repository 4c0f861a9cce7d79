"""The Manager: registration, start/stop order, restarts with backoff, and the shutdown deadline."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time

import pytest

from taskflow import Backoff, ConfigurationError, Manager, ShutdownReport, WorkerState
from taskflow.manager import RESTART_BACKOFF

FAST_RESTARTS = Backoff(initial=0.01, maximum=0.04, jitter=0)


class MyCustomWorker:
    """A custom worker: a name, a start that loops until stopped, a stop."""

    def __init__(self, name: str, journal: list[str] | None = None, period: float = 0.001) -> None:
        self.name = name
        self.rounds = 0
        self.journal = journal if journal is not None else []
        self.period = period
        self.working = asyncio.Event()
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self.journal.append(f"start {self.name}")
        while not self._stopping.is_set():
            self.rounds += 1  # the work
            self.working.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self.period)

    async def stop(self) -> None:
        self.journal.append(f"stop {self.name}")
        self._stopping.set()


class Stubborn:
    """Ignores stop: only cancellation ends it."""

    name = "stubborn"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.asked_to_stop = asyncio.Event()
        self.cancelled = False

    async def start(self) -> None:
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def stop(self) -> None:
        self.asked_to_stop.set()


async def run_until(manager: Manager, ready: asyncio.Event) -> asyncio.Task[ShutdownReport]:
    task = asyncio.create_task(manager.run())
    async with asyncio.timeout(5):
        await ready.wait()
    return task


async def finish(task: asyncio.Task[ShutdownReport], within: float = 5) -> ShutdownReport:
    async with asyncio.timeout(within):
        return await task


async def test_a_second_worker_with_the_same_name_is_refused() -> None:
    manager = Manager()
    manager.register(MyCustomWorker("sync"))
    with pytest.raises(ConfigurationError, match="'sync' is already registered"):
        manager.register(MyCustomWorker("sync"))
    assert list(manager.statuses) == ["sync"]


async def test_something_that_is_not_a_worker_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="no name, async start"):
        Manager().register(object())  # type: ignore[arg-type]


async def test_workers_start_in_order_and_stop_in_reverse_order() -> None:
    journal: list[str] = []
    workers = [MyCustomWorker(name, journal) for name in ("db", "cache", "api")]
    manager = Manager()
    for worker in workers:
        manager.register(worker)
    task = await run_until(manager, workers[-1].working)

    manager.request_stop("test")
    report = await finish(task)

    assert journal == [
        "start db",
        "start cache",
        "start api",
        "stop api",
        "stop cache",
        "stop db",
    ]
    assert report == ShutdownReport(cancelled=(), signal="test")


async def test_a_custom_worker_runs_and_stops_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "taskflow")
    worker = MyCustomWorker("sync")
    manager = Manager()
    manager.register(worker)
    task = await run_until(manager, worker.working)
    manager.request_stop("SIGTERM")
    report = await finish(task)

    assert report.clean
    assert report.signal == "SIGTERM"
    assert worker.rounds >= 1
    assert manager.statuses["sync"].state is WorkerState.STOPPED
    assert manager.statuses["sync"].restarts == 0
    assert "stop requested (SIGTERM)" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


class Crasher:
    """Crashes on its first `crashes` starts, each time once it has seen `other` do some work."""

    name = "crasher"

    def __init__(self, crashes: int, other: MyCustomWorker) -> None:
        self.crashes = crashes
        self.other = other
        self.starts: list[float] = []
        self.others_rounds: list[int] = []
        self.survived = asyncio.Event()
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self.starts.append(time.monotonic())
        self.other.working.clear()
        async with asyncio.timeout(5):
            await self.other.working.wait()  # the other worker is still at it
        self.others_rounds.append(self.other.rounds)
        if len(self.starts) <= self.crashes:
            raise RuntimeError(f"boom #{len(self.starts)}")
        self.survived.set()
        await self._stopping.wait()

    async def stop(self) -> None:
        self._stopping.set()


async def test_a_crashing_worker_is_restarted_with_backoff_while_others_work(
    caplog: pytest.LogCaptureFixture,
) -> None:
    other = MyCustomWorker("other")
    crasher = Crasher(crashes=4, other=other)
    manager = Manager(restart_backoff=FAST_RESTARTS)
    manager.register(other)
    manager.register(crasher)

    task = await run_until(manager, crasher.survived)
    status = manager.statuses["crasher"]
    assert status.restarts == 4
    assert status.last_error == "RuntimeError: boom #4"
    assert status.state is WorkerState.RUNNING
    manager.request_stop()
    report = await finish(task)
    assert report.clean

    gaps = [later - earlier for earlier, later in itertools.pairwise(crasher.starts)]
    for gap, wait in zip(gaps, [0.01, 0.02, 0.04, 0.04], strict=True):  # doubling, capped
        assert gap >= wait * 0.9
    # The other worker kept working through every crash and backoff.
    assert crasher.others_rounds == sorted(set(crasher.others_rounds))
    assert manager.statuses["other"].restarts == 0

    crashes = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert [r.getMessage() for r in crashes] == [
        "worker crasher crashed; restarting in 0.01s (restart #1)",
        "worker crasher crashed; restarting in 0.02s (restart #2)",
        "worker crasher crashed; restarting in 0.04s (restart #3)",
        "worker crasher crashed; restarting in 0.04s (restart #4)",
    ]
    for number, record in enumerate(crashes, 1):
        assert record.levelno == logging.ERROR
        assert record.exc_info is not None
        assert str(record.exc_info[1]) == f"boom #{number}"
    assert "Traceback" in caplog.text


def test_the_default_restart_backoff_doubles_from_1s_to_60s() -> None:
    assert [RESTART_BACKOFF.delay(n) for n in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert RESTART_BACKOFF.delay(1000) == 60


async def test_the_manager_uses_the_default_restart_backoff() -> None:
    assert Manager().restart_backoff == RESTART_BACKOFF


async def test_a_worker_that_ignores_stop_is_cancelled_at_the_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stubborn, polite = Stubborn(), MyCustomWorker("polite")
    manager = Manager(shutdown_timeout=0.1)
    manager.register(polite)
    manager.register(stubborn)
    task = await run_until(manager, stubborn.started)

    began = time.monotonic()
    manager.request_stop("SIGTERM")
    report = await finish(task)

    assert time.monotonic() - began >= 0.1 * 0.9  # it was given its time first
    assert report.cancelled == ("stubborn",)
    assert not report.clean
    assert stubborn.asked_to_stop.is_set()
    assert stubborn.cancelled
    assert "cancelling worker stubborn: it did not finish within 0.1s" in caplog.text
    assert "polite" not in report.cancelled
    assert manager.statuses["stubborn"].state is WorkerState.STOPPED


async def test_a_second_stop_request_cancels_at_once(caplog: pytest.LogCaptureFixture) -> None:
    stubborn = Stubborn()
    manager = Manager(shutdown_timeout=60)
    manager.register(stubborn)
    task = await run_until(manager, stubborn.started)

    manager.request_stop("SIGINT")
    async with asyncio.timeout(5):
        await stubborn.asked_to_stop.wait()
    manager.request_stop("SIGINT")
    report = await finish(task, within=5)  # far less than the 60 s timeout

    assert report.cancelled == ("stubborn",)
    assert report.signal == "SIGINT"
    assert "second stop request (SIGINT): cancelling now" in caplog.text
    assert "cancelling worker stubborn: a second stop request came" in caplog.text


class OneShot:
    """Does its job and returns without being asked to stop."""

    name = "migrate"

    def __init__(self) -> None:
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1

    async def stop(self) -> None:
        pass


async def test_a_worker_that_finishes_on_its_own_is_not_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "taskflow")
    oneshot, other = OneShot(), MyCustomWorker("other")
    manager = Manager(restart_backoff=FAST_RESTARTS)
    manager.register(oneshot)
    manager.register(other)
    task = await run_until(manager, other.working)

    supervisor = manager.statuses["migrate"].task
    assert supervisor is not None
    async with asyncio.timeout(5):
        await asyncio.wait({supervisor})  # done: nothing will start it again
    assert oneshot.starts == 1
    assert manager.statuses["migrate"].state is WorkerState.STOPPED
    assert "worker migrate finished on its own" in caplog.text

    manager.request_stop()
    report = await finish(task)
    assert report.clean
    assert oneshot.starts == 1


class Observer:
    """Writes down the states the Manager reports for itself and for another worker."""

    def __init__(self, name: str, manager: Manager, journal: list[tuple[str, WorkerState]]) -> None:
        self.name = name
        self.manager = manager
        self.journal = journal
        self.running = asyncio.Event()
        self._stopping = asyncio.Event()

    def note(self, who: str) -> None:
        self.journal.append((who, self.manager.statuses[who].state))

    async def start(self) -> None:
        self.note(self.name)
        self.note("late")
        self.running.set()
        await self._stopping.wait()

    async def stop(self) -> None:
        self.note(self.name)
        self._stopping.set()


async def test_states_of_a_worker_that_runs_and_stops() -> None:
    journal: list[tuple[str, WorkerState]] = []
    manager = Manager()
    observer = Observer("early", manager, journal)
    manager.register(observer)
    manager.register(MyCustomWorker("late"))
    assert manager.statuses["early"].state is WorkerState.STOPPED  # registered, not run yet

    task = await run_until(manager, observer.running)
    assert manager.statuses["late"].state is WorkerState.RUNNING
    manager.request_stop()
    await finish(task)

    assert journal == [
        ("early", WorkerState.RUNNING),  # inside its own start()
        ("late", WorkerState.STARTING),  # run() began; its start() was not called yet
        ("early", WorkerState.STOPPING),  # inside its own stop()
    ]
    assert {s.state for s in manager.statuses.values()} == {WorkerState.STOPPED}


class CrashesOnce:
    """Crashes on start; a restart backoff then runs."""

    name = "flaky"

    def __init__(self) -> None:
        self.crashed = asyncio.Event()
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        self.crashed.set()
        raise ConnectionError("database went away")

    async def stop(self) -> None:
        pass


async def test_a_crashed_worker_is_restarting_during_its_backoff() -> None:
    flaky = CrashesOnce()
    manager = Manager(restart_backoff=Backoff(initial=30, maximum=60, jitter=0))
    manager.register(flaky)
    task = await run_until(manager, flaky.crashed)

    status = manager.statuses["flaky"]
    assert status.state is WorkerState.RESTARTING
    assert status.last_error == "ConnectionError: database went away"
    assert status.restarts == 0  # not restarted yet: the backoff is 30 s

    manager.request_stop()
    report = await finish(task)  # the stop cuts the backoff short
    assert report.clean
    assert status.state is WorkerState.STOPPED
    assert flaky.starts == 1


class FailsWhileStopping:
    """Raises from start() once asked to stop."""

    name = "fragile"

    def __init__(self) -> None:
        self.running = asyncio.Event()
        self._stopping = asyncio.Event()
        self.starts = 0

    async def start(self) -> None:
        self.starts += 1
        self.running.set()
        await self._stopping.wait()
        raise OSError("flush failed")

    async def stop(self) -> None:
        self._stopping.set()


async def test_a_worker_that_crashes_while_stopping_is_failed_and_not_restarted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fragile = FailsWhileStopping()
    manager = Manager(restart_backoff=FAST_RESTARTS)
    manager.register(fragile)
    task = await run_until(manager, fragile.running)
    manager.request_stop()
    await finish(task)

    status = manager.statuses["fragile"]
    assert status.state is WorkerState.FAILED
    assert status.last_error == "OSError: flush failed"
    assert fragile.starts == 1
    (record,) = [r for r in caplog.records if "failed while stopping" in r.getMessage()]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], OSError)


class HangsInStop(Stubborn):
    """Ignores stop, and its stop() itself never returns."""

    name = "hangs"

    async def stop(self) -> None:
        self.asked_to_stop.set()
        await asyncio.Event().wait()


async def test_a_second_stop_request_cancels_at_once_even_during_a_hung_stop_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hangs = HangsInStop()
    manager = Manager(shutdown_timeout=60)
    manager.register(hangs)
    task = await run_until(manager, hangs.started)

    manager.request_stop("SIGINT")
    async with asyncio.timeout(5):
        await hangs.asked_to_stop.wait()
    manager.request_stop("SIGINT")
    report = await finish(task, within=5)  # not the 60 s

    assert report.cancelled == ("hangs",)
    assert hangs.cancelled
    assert "worker hangs: stop() did not return in time" in caplog.text
