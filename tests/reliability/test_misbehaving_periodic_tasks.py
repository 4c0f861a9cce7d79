"""Periodic tasks that never end, raise SystemExit and its kin, or a custom BaseException.

Each case runs `taskflow run` with two periodic tasks, ``misbehave`` and ``steady``
(`tests/apps/misbehaving_periodic.py`), and asserts what a user notices: the exit code, how long
the process took to exit after the signal, the line naming the task and its tick, what the other
task did, and with Redis, the run record of the tick.
"""

from __future__ import annotations

import re
import signal
import time
import uuid

import pytest
from redis.asyncio import Redis

from taskflow.stores import keys
from tests._process import AppProcess
from tests._redis import REDIS_URL

SHUTDOWN_TIMEOUT = 3.0
TICK = r"(\d{4}-\d\d-\d\dT[\d:.]+\+00:00)"


def _app(mode: str, **env: str) -> AppProcess:
    return AppProcess(
        "tests.apps.misbehaving_periodic:app",
        "--shutdown-timeout",
        str(SHUTDOWN_TIMEOUT),
        "--log-level",
        "INFO",
        env={"MISBEHAVING_MODE": mode, **env},
    )


def _lines(log: str, text: str) -> list[str]:
    return [line for line in log.splitlines() if text in line]


@pytest.mark.parametrize("mode", ["stuck-def", "stuck-async"])
def test_a_periodic_task_that_never_ends_is_abandoned_at_the_deadline(mode: str) -> None:
    with _app(mode) as app:
        tick = re.search(TICK, app.wait_for(rf"misbehaving.* start {TICK}"))[1]  # type: ignore[index]
        sent = time.monotonic()
        code = app.stop(signal.SIGTERM, timeout=30)
        took = time.monotonic() - sent
    assert code == 1, app.log
    assert took < SHUTDOWN_TIMEOUT + 1.0, f"exited {took:.1f}s after SIGTERM\n{app.log}"
    abandoned = _lines(app.log, "abandoned periodic task")
    assert len(abandoned) == 1, app.log
    assert f"abandoned periodic task misbehave for tick {tick}: " in abandoned[0]
    assert "abandoned worker" not in app.log  # the worker gave up on the run, not the Manager
    assert "Traceback" not in app.log


@pytest.mark.redis
async def test_system_exit_in_a_periodic_task_stops_the_process_with_its_code(
    redis: Redis,
) -> None:
    name = f"misbehaving-{uuid.uuid4().hex[:8]}"
    with _app("exit", MISBEHAVING_APP=name, TASKFLOW_REDIS_URL=REDIS_URL) as app:
        code = app.wait(timeout=60)
    assert code == 4, app.log
    raised = _lines(app.log, "raised SystemExit(4) for tick")
    assert len(raised) == 1, app.log
    tick = re.search(TICK, raised[0])[1]  # type: ignore[index]
    assert "periodic task misbehave" in raised[0]
    # the other task was going: it finished its run, it was not cancelled
    running = re.search(rf"steady start {TICK}", app.log)
    assert running is not None, app.log
    after = app.log[app.log.index(raised[0]) :]
    assert f"steady done {running[1]}" in after, app.log
    assert "cancelling worker" not in app.log
    assert "Traceback" not in app.log
    record = await redis.hgetall(keys.schedule(name, "misbehave", "last"))
    assert record[b"outcome"] == b"failed", record
    assert record[b"tick"].decode().startswith(tick[:19]), (record, tick)


def test_keyboard_interrupt_in_a_periodic_task_stops_the_process_with_1() -> None:
    with _app("interrupt") as app:
        code = app.wait(timeout=60)
    assert code == 1, app.log
    raised = _lines(app.log, "raised KeyboardInterrupt for tick")
    assert len(raised) == 1, app.log
    assert "periodic task misbehave" in raised[0]
    assert re.search(rf"steady done {TICK}", app.log[app.log.index(raised[0]) :]), app.log
    assert "cancelling worker" not in app.log


def test_a_custom_base_exception_fails_the_run_and_the_schedule_goes_on() -> None:
    with _app("base") as app:
        app.wait_for(rf"misbehave@{TICK} failed after", count=2)
        code = app.stop(signal.SIGTERM, timeout=30)
    assert code == 0, app.log
    failed = _lines(app.log, "failed after")
    assert all("misbehave@" in line for line in failed), failed
    assert "Poison: poisoned" in app.log  # its traceback
    assert "crashed" not in app.log
    assert re.search(rf"steady done {TICK}", app.log), app.log
