"""`taskflow run --processes N`: a supervisor over N ordinary `taskflow run` processes.

The first tests run the real command (tests/_process.py) with the apps in tests/apps/proc_*.py and
send real signals; they wait for log lines, never for time to pass. The last ones drive a
`Supervisor` in-process over tiny Python children, for the paths a real app cannot show quickly:
a child that ignores SIGTERM, and a child that keeps crashing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from types import TracebackType

import pytest

from taskflow.backoff import Backoff
from taskflow.supervisor import PROCESS_INDEX_ENV, SUPERVISOR_PID_ENV, Supervisor
from tests._process import ROOT, AppProcess, count_lines, wait_until
from tests._redis import REDIS_URL

DRAIN = "tests.apps.proc_drain:app"
MISCONFIGURED = "tests.apps.proc_misconfigured:app"
STARTED = r"taskflow\.supervisor process #{} started \(pid (\d+)\)"
HOLDING = r" #{0} INFO .* process {0} \(pid (\d+)\) holding job"
LOG_TIMEOUT = 10.0


class Supervised(AppProcess):
    """`taskflow run --processes N`; on exit, no child of it is left running, whatever happened.

    A child that outlived its supervisor would hold the stderr pipe open, and the reader with it.
    """

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            for pid in children_of(self._proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        super().__exit__(exc_type, exc, tb)


def children_of(supervisor: int) -> list[int]:
    """The processes started by the supervisor with pid `supervisor` (Linux: from /proc)."""
    mark = f"{SUPERVISOR_PID_ENV}={supervisor}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and mark in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone, or not ours
            continue
    return found


def started_pid(app: AppProcess, index: int, count: int = 1) -> int:
    """The pid of the `count`-th start of child `index`, from the supervisor's log."""
    line = app.wait_for(STARTED.format(index), LOG_TIMEOUT, count=count)
    match = re.search(STARTED.format(index), line)
    assert match is not None
    return int(match.group(1))


def holding_pid(app: AppProcess, index: int, count: int = 1) -> int:
    """The pid of child `index`'s `count`-th run once its job is in flight, from its own log."""
    line = app.wait_for(HOLDING.format(index), LOG_TIMEOUT, count=count)
    match = re.search(HOLDING.format(index), line)
    assert match is not None
    return int(match.group(1))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- the command line ------------------------------------------------------------------------


def test_sigterm_drains_every_process_and_exits_0() -> None:
    with Supervised(DRAIN, "--processes", "2") as app:
        pids = [holding_pid(app, 0), holding_pid(app, 1)]
        assert pids == [started_pid(app, 0), started_pid(app, 1)]

        sent = time.monotonic()
        code = app.stop(signal.SIGTERM, timeout=LOG_TIMEOUT)
        took = time.monotonic() - sent

    assert code == 0, app.log
    assert took < 3, f"SIGTERM to exit took {took:.1f}s"
    for index, pid in enumerate(pids):
        assert f" #{index} INFO  taskflow.manager stop requested (SIGTERM): finishing" in app.log
        assert f" #{index} INFO  proc [on_job] process {index} (pid {pid}) finished job" in app.log
        assert f" #{index} INFO  taskflow app proc stopped cleanly" in app.log
        assert f"process #{index} (pid {pid}) exited 0" in app.log
    assert "second stop request" not in app.log
    assert app.lines[-1].endswith("taskflow.supervisor all 2 processes stopped cleanly")


def test_each_child_has_its_own_process_group() -> None:
    # A Ctrl-C at a terminal goes to the foreground process group: the supervisor's alone, so
    # each child gets the SIGINT once (forwarded), not twice (which would mean "cancel now").
    with Supervised(DRAIN, "--processes", "2") as app:
        pids = [holding_pid(app, 0), holding_pid(app, 1)]

        assert [os.getpgid(pid) for pid in pids] == pids
        assert app.stop(signal.SIGINT, timeout=LOG_TIMEOUT) == 0, app.log
    assert app.log.count("taskflow.manager stop requested (SIGINT)") == 2


def test_a_killed_process_is_restarted_and_the_other_keeps_running() -> None:
    with Supervised(DRAIN, "--processes", "2") as app:
        first, other = holding_pid(app, 0), holding_pid(app, 1)

        os.kill(first, signal.SIGKILL)
        app.wait_for(
            rf"process #0 \(pid {first}\) was killed by SIGKILL; restarting in 1s \(restart #1\)",
            LOG_TIMEOUT,
        )
        second = holding_pid(app, 0, count=2)

        assert second != first
        assert started_pid(app, 0, count=2) == second
        assert alive(other)
        assert len(re.findall(STARTED.format(1), app.log)) == 1
        assert " #1 INFO  taskflow.manager stop requested" not in app.log
        code = app.stop(signal.SIGTERM, timeout=LOG_TIMEOUT)

    assert code == 0, app.log  # the last run of each process stopped cleanly
    assert f"process #0 (pid {second}) exited 0" in app.log
    assert f"process #1 (pid {other}) exited 0" in app.log


def test_children_drain_and_exit_when_the_supervisor_is_killed() -> None:
    with Supervised(DRAIN, "--processes", "2") as app:
        holding_pid(app, 0)
        holding_pid(app, 1)

        app.send(signal.SIGKILL)
        app.wait_for(r"taskflow app proc stopped cleanly", LOG_TIMEOUT, count=2)
        assert app.wait(timeout=LOG_TIMEOUT) == -signal.SIGKILL

    # Each child read the end of its stdin, stopped as on one SIGTERM, drained, and closed stderr.
    assert app.log.count("WARNING taskflow.supervisor the supervisor is gone: stopping") == 2
    assert app.log.count("taskflow.manager stop requested (SIGTERM)") == 2
    assert "second stop request" not in app.log
    assert app.log.count("finished job") == 2


def test_a_second_signal_is_forwarded_and_cancels_the_drain() -> None:
    env = {"PROC_DRAIN_SECONDS": "30"}
    with Supervised(DRAIN, "--processes", "2", "--shutdown-timeout", "20", env=env) as app:
        holding_pid(app, 0)
        holding_pid(app, 1)
        app.send(signal.SIGTERM)
        app.wait_for(r"taskflow\.manager stop requested \(SIGTERM\)", LOG_TIMEOUT, count=2)

        sent = time.monotonic()
        code = app.stop(signal.SIGINT, timeout=LOG_TIMEOUT)
        took = time.monotonic() - sent

    assert code == 1, app.log  # both children had to cancel their handler
    assert took < 5, f"the second signal to exit took {took:.1f}s of a 20s shutdown timeout"
    assert "stop requested again (SIGINT): forwarding it" in app.log
    for index in (0, 1):
        assert f" #{index} WARNING taskflow.manager second stop request (SIGINT)" in app.log
        assert re.search(rf"process #{index} \(pid \d+\) exited 1", app.log), app.log
    assert "finished job" not in app.log
    assert app.lines[-1].endswith("taskflow.supervisor processes stopped; exit code 1")


@pytest.mark.parametrize(
    ("bad", "started"), [("", 2), ("1", 2)], ids=["every-process", "one-process"]
)
def test_a_configuration_error_stops_everything_with_exit_2(bad: str, started: int) -> None:
    env = {"PROC_BAD_INDEX": bad} if bad else {}
    with Supervised(MISCONFIGURED, "--processes", "2", env=env) as app:
        code = app.wait(timeout=LOG_TIMEOUT)

    assert code == 2, app.log
    assert app.log.count("started (pid") == started  # no restarts
    assert "restarting" not in app.log
    assert re.search(r"process #\d \(pid \d+\) exited 2, a usage or configuration error", app.log)
    assert "Error: on_job: idempotent=True keeps its claims in Redis" in app.log
    if bad:  # the healthy process was asked to stop, and did: running, starting up, or so early
        # that Python itself was still starting (its default SIGTERM action ends it)
        assert re.search(
            r" #0 (INFO  taskflow app misconfigured stopped cleanly|"
            r"WARNING taskflow app misconfigured did not run: start-up interrupted)|"
            r"process #0 \(pid \d+\) was killed by SIGTERM",
            app.log,
        ), app.log
    assert app.lines[-1].endswith("processes stopped; exit code 2")


def test_children_get_the_same_options_and_json_lines_carry_the_index() -> None:
    args = ("--processes", "2", "--log-format", "json", "--debug", "--shutdown-timeout", "7")
    with Supervised(MISCONFIGURED, *args, env={"PROC_BAD_INDEX": "1"}) as app:
        code = app.wait(timeout=LOG_TIMEOUT)

    assert code == 2, app.log
    assert "Traceback (most recent call last):" in app.log  # --debug, in the failing child
    entries = [json.loads(line) for line in app.lines if line.startswith("{")]
    # The healthy process is told to stop while it runs, or while it is still starting up.
    stops = ("stop requested (SIGTERM): finishing", "SIGTERM during start-up: interrupting")
    stop = [e for e in entries if e["message"].startswith(stops)]
    killed = [
        e
        for e in entries
        if re.match(r"process #0 \(pid \d+\) was killed by SIGTERM", e["message"])
    ]
    assert all("process_index" not in e for e in entries if e["logger"] == "taskflow.supervisor")
    assert {e.get("process_index") for e in entries if e["logger"] != "taskflow.supervisor"} >= {1}
    if not killed:  # else it was told to stop while Python itself was still starting
        assert [e["process_index"] for e in stop] == [0], app.log
        assert stop[0]["logger"] in ("taskflow.manager", "taskflow")
        assert stop[0]["message"].endswith("at most 7s")


def test_processes_1_runs_the_app_without_a_supervisor() -> None:
    with Supervised(DRAIN, "--processes", "1") as app:
        app.wait_for(r"process - \(pid \d+\) holding job", LOG_TIMEOUT)
        assert app.stop(signal.SIGTERM, timeout=LOG_TIMEOUT) == 0, app.log
    assert "supervisor" not in app.log
    assert app.lines[-1].endswith("taskflow app proc stopped cleanly")


def test_taskflow_processes_sets_the_count_and_children_do_not_supervise() -> None:
    with Supervised(DRAIN, env={"TASKFLOW_PROCESSES": "2"}) as app:
        holding_pid(app, 0)
        holding_pid(app, 1)
        assert app.stop(signal.SIGTERM, timeout=LOG_TIMEOUT) == 0, app.log
    assert app.log.count("supervising 2 processes") == 1
    assert app.log.count("started (pid") == 2


@pytest.mark.redis
@pytest.mark.parametrize("fleet", [True, False], ids=["with-redis", "without-redis"])
def test_each_periodic_tick_runs_once_across_the_processes_with_redis(
    tmp_path: Path, fleet: bool
) -> None:
    ticks = tmp_path / "ticks"
    env = {"PROC_TICKS": str(ticks), "PROC_APP": f"proc-ticker-{uuid.uuid4().hex[:8]}"}
    redis = ["--redis", REDIS_URL] if fleet else []
    with Supervised("tests.apps.proc_ticker:app", "--processes", "2", *redis, env=env) as app:
        app.wait_for(r"#\d INFO  taskflow app proc-ticker-\w+ running", LOG_TIMEOUT, count=2)
        both_up = count_lines(ticks)
        wait_until(lambda: count_lines(ticks) >= both_up + 3, LOG_TIMEOUT, "three more runs")
        assert app.stop(signal.SIGTERM, timeout=LOG_TIMEOUT) == 0, app.log

    runs = [line.split() for line in ticks.read_text().splitlines()[both_up:]]
    per_tick = Counter(scheduled_at for scheduled_at, _, _ in runs)
    if fleet:  # each tick claimed by one process only
        assert set(per_tick.values()) == {1}, per_tick
    else:  # the control: without Redis each process runs each tick
        assert 2 in per_tick.values(), per_tick
    assert {index for _, index, _ in runs} <= {"0", "1"}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "must be a whole number from 1 to 4096 or 'auto', got '0'"),
        ("-3", "must be a whole number from 1 to 4096 or 'auto', got '-3'"),
        ("many", "must be a whole number from 1 to 4096 or 'auto', got 'many'"),
    ],
)
def test_a_bad_process_count_is_a_usage_error(value: str, message: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "taskflow", "run", DRAIN, "--processes", value],
        cwd=ROOT,
        capture_output=True,
        encoding="utf-8",
        timeout=LOG_TIMEOUT,
        check=False,
    )

    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"Error: Invalid value for '--processes' (env var: 'TASKFLOW_PROCESSES'): {message}"
    ]


def test_auto_is_one_process_per_usable_cpu() -> None:
    from taskflow.cli import _WholeNumber

    count = _WholeNumber(1, 4096, auto=True)
    assert count.convert("auto", None, None) == len(os.sched_getaffinity(0))
    assert count.convert("3", None, None) == 3


# -- the Supervisor in-process, over tiny children ---------------------------------------------


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def until(predicate: object, what: str, timeout: float = LOG_TIMEOUT) -> None:
    """Wait (bounded) for a fact only another process or the supervisor's state can tell."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def test_a_child_that_ignores_sigterm_is_killed_after_the_grace(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ready = tmp_path / "ready"
    stubborn = python(
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "open(sys.argv[1], 'w').close()\n"
        "time.sleep(60)\n"
    )
    supervisor = Supervisor(
        lambda index: [*stubborn, str(ready)], 1, shutdown_timeout=0.2, kill_grace=0.3
    )
    running = asyncio.create_task(supervisor.run(install_signal_handlers=False))
    await until(ready.exists, "the child to ignore SIGTERM")

    supervisor.request_stop(signal.SIGTERM)
    code = await asyncio.wait_for(running, LOG_TIMEOUT)

    assert code == 1
    [child] = supervisor.children
    assert child.pid is not None
    assert re.search(
        rf"process #0 \(pid {child.pid}\) still running 0\.5s after the stop: killing it",
        caplog.text,
    )
    assert f"process #0 (pid {child.pid}) was killed by SIGKILL" in caplog.text


async def test_a_crashing_child_is_restarted_with_doubling_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "taskflow.supervisor")
    # Child 0 crashes at once, every time; child 1 runs until it is told to stop.
    crash = python("import sys; sys.exit(3)")
    steady = python("import time; time.sleep(60)")
    supervisor = Supervisor(
        lambda index: crash if index == 0 else steady,
        2,
        restart_backoff=Backoff(initial=0.05, maximum=0.2, jitter=0),
    )
    running = asyncio.create_task(supervisor.run(install_signal_handlers=False))
    crashing, steady_child = supervisor.children
    await until(lambda: crashing.restarts >= 4, "four restarts")

    supervisor.request_stop(signal.SIGTERM)
    code = await asyncio.wait_for(running, LOG_TIMEOUT)

    assert code == 1  # the crashing child's last run exited 3, which counts as unclean
    waits = re.findall(r"process #0 \(pid \d+\) exited 3; restarting in (\S+)s", caplog.text)
    assert waits[:4] == ["0.05", "0.1", "0.2", "0.2"]
    assert steady_child.restarts == 0
    assert "process #1 (pid" in caplog.text
    assert f"process #1 (pid {steady_child.pid}) was killed by SIGTERM" in caplog.text


async def test_each_child_gets_its_index(tmp_path: Path) -> None:
    out = tmp_path / "indexes"
    record = python(
        "import os, sys, time\n"
        f"fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT)\n"
        f"os.write(fd, (os.environ[{PROCESS_INDEX_ENV!r}] + '\\n').encode())\n"
        "time.sleep(60)\n"
    )
    supervisor = Supervisor(lambda index: [*record, str(out)], 3)
    running = asyncio.create_task(supervisor.run(install_signal_handlers=False))
    await until(lambda: count_lines(out) == 3, "every child to write its index")
    supervisor.request_stop()
    await asyncio.wait_for(running, LOG_TIMEOUT)

    assert sorted(out.read_text().split()) == ["0", "1", "2"]
