"""Handlers that never return, swallow cancellation, or raise SystemExit and its kin.

Each case runs `taskflow run` against the real broker: five good records, then ``bad`` at offset
5, then five more, on one partition. What a user notices is asserted: the exit code, how long the
process took to exit after the signal, the line naming the handler and the record, and the offset
the group committed.
"""

from __future__ import annotations

import signal
import time

import pytest
from aiokafka import AIOKafkaProducer

from tests._process import AppProcess
from tests._tansu import committed_offsets, create_topic

pytestmark = pytest.mark.kafka

SHUTDOWN_TIMEOUT = 3.0
BAD_OFFSET = 5


async def _topic_with_a_bad_record(bootstrap: str, producer: AIOKafkaProducer, name: str) -> None:
    await create_topic(bootstrap, name, 1)
    for index in range(11):
        value = b"bad" if index == BAD_OFFSET else b"good %d" % index
        await producer.send_and_wait(name, value, partition=0)


def _app(app_env: dict[str, str], topic: str, mode: str, **extra: str) -> AppProcess:
    env = {
        **app_env,
        "MISBEHAVING_TOPIC": topic,
        "MISBEHAVING_GROUP": f"{topic}-group",
        "MISBEHAVING_MODE": mode,
        **extra,
    }
    return AppProcess(
        "tests.apps.misbehaving:app",
        "--shutdown-timeout",
        str(SHUTDOWN_TIMEOUT),
        "--log-level",
        "INFO",
        env=env,
    )


@pytest.mark.parametrize("mode", ["stuck-def", "stuck-async"])
async def test_a_handler_that_never_ends_is_abandoned_at_the_deadline(
    bootstrap: str, producer: AIOKafkaProducer, app_env: dict[str, str], unique: str, mode: str
) -> None:
    topic = f"{unique}-stuck"
    await _topic_with_a_bad_record(bootstrap, producer, topic)
    with _app(app_env, topic, mode) as app:
        app.wait_for(rf"start 0 {BAD_OFFSET}\b")
        app.wait_for(rf"done 0 {BAD_OFFSET - 1}\b")
        sent = time.monotonic()
        code = app.stop(signal.SIGTERM, timeout=30)
        took = time.monotonic() - sent
    assert code == 1, app.log
    assert took < SHUTDOWN_TIMEOUT + 1.0, f"exited {took:.1f}s after SIGTERM\n{app.log}"
    abandoned = [line for line in app.log.splitlines() if "abandoned handler" in line]
    assert len(abandoned) == 1, app.log
    assert "misbehave" in abandoned[0]
    assert f"{topic}[0]@{BAD_OFFSET}" in abandoned[0]
    committed = await committed_offsets(bootstrap, f"{topic}-group", topic, 1)
    assert committed == {0: BAD_OFFSET}  # all before it, not it


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT])
async def test_a_second_signal_abandons_a_stuck_handler_at_once(
    bootstrap: str,
    producer: AIOKafkaProducer,
    app_env: dict[str, str],
    unique: str,
    second: signal.Signals,
) -> None:
    topic = f"{unique}-second"
    await _topic_with_a_bad_record(bootstrap, producer, topic)
    app = _app(app_env, topic, "stuck-def")
    app.args = ("--shutdown-timeout", "60")
    with app:
        app.wait_for(rf"start 0 {BAD_OFFSET}\b")
        app.wait_for(rf"done 0 {BAD_OFFSET - 1}\b")
        app.send(signal.SIGTERM)
        app.wait_for("stop requested")
        sent = time.monotonic()
        code = app.stop(second, timeout=30)
        took = time.monotonic() - sent
    assert code == 1, app.log
    assert took < 5.0, f"exited {took:.1f}s after the second signal\n{app.log}"
    assert f"abandoned handler misbehave for {topic}[0]@{BAD_OFFSET}" in app.log
    committed = await committed_offsets(bootstrap, f"{topic}-group", topic, 1)
    assert committed == {0: BAD_OFFSET}


@pytest.mark.parametrize(
    ("mode", "raised", "exit_code"),
    [("exit", "SystemExit(3)", 3), ("interrupt", "KeyboardInterrupt", 1)],
)
async def test_a_handler_raising_system_exit_stops_the_process_gracefully(
    bootstrap: str,
    producer: AIOKafkaProducer,
    app_env: dict[str, str],
    unique: str,
    mode: str,
    raised: str,
    exit_code: int,
) -> None:
    topic = f"{unique}-{mode}"
    await _topic_with_a_bad_record(bootstrap, producer, topic)
    with _app(app_env, topic, mode) as app:
        code = app.wait(timeout=60)
    assert code == exit_code, app.log
    lines = [line for line in app.log.splitlines() if f"raised {raised} for" in line]
    assert len(lines) == 1, app.log
    assert "handler misbehave" in lines[0]
    assert f"{topic}[0]@{BAD_OFFSET}" in lines[0]
    assert "Task exception was never retrieved" not in app.log
    assert "Traceback" not in app.log
    assert f"done 0 {BAD_OFFSET + 1}" not in app.log  # nothing after it ran
    committed = await committed_offsets(bootstrap, f"{topic}-group", topic, 1)
    assert committed == {0: BAD_OFFSET}  # redelivered after a restart


async def test_a_custom_base_exception_is_a_failure_of_the_record(
    bootstrap: str, producer: AIOKafkaProducer, app_env: dict[str, str], unique: str
) -> None:
    topic = f"{unique}-base"
    await _topic_with_a_bad_record(bootstrap, producer, topic)
    dead = f"{unique}-dead"
    await create_topic(bootstrap, dead, 1)
    with _app(app_env, topic, "base", MISBEHAVING_DEAD_LETTER=dead) as app:
        app.wait_for(r"done 0 10\b")
        app.wait_for(rf"{topic}\[0\]@{BAD_OFFSET} .*Poison.*sent to {dead}")
        code = app.stop(signal.SIGTERM, timeout=30)
    assert code == 0, app.log
    assert f"{topic}[0]@{BAD_OFFSET} attempt 1 failed: Poison: poisoned" in app.log
    committed = await committed_offsets(bootstrap, f"{topic}-group", topic, 1)
    assert committed == {0: 11}
