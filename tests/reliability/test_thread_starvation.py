"""A `def` handler that hangs past its timeout keeps its threads to itself.

A thread cannot be cancelled, so each timed-out call keeps running. It must not take the threads of
another registration, must show in /healthz, and at shutdown only it may be named as abandoned:
for a consumer's handler and for a periodic task's.
"""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request

import pytest
from aiokafka import AIOKafkaProducer

from tests._process import AppProcess
from tests._tansu import committed_offsets, create_topic

pytestmark = pytest.mark.kafka

RECORDS = 40


def _get(port: int, path: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def test_a_hanging_def_handler_does_not_starve_another(
    bootstrap: str, producer: AIOKafkaProducer, app_env: dict[str, str], unique: str
) -> None:
    hang, topic = f"{unique}-hang", f"{unique}-innocent"
    await create_topic(bootstrap, hang, 1)
    await create_topic(bootstrap, topic, 1)
    await producer.send_and_wait(hang, b"stuck", partition=0)
    env = {**app_env, "STARVING_HANG_TOPIC": hang, "STARVING_TOPIC": topic}
    with AppProcess(
        "tests.apps.starving:app", "--http-port", "0", "--shutdown-timeout", "3", env=env
    ) as app:
        port = int(re.search(r"http://[^:]+:(\d+)", app.wait_for("operations endpoint on"))[1])
        # the hanging one times out and is blocked: its one stuck thread is its bound
        app.wait_for(r"hang: 1 handler thread\(s\) still running past their timeout", 30)
        for index in range(RECORDS):  # more than asyncio's default pool has threads
            await producer.send_and_wait(topic, b"%d" % index, partition=0)
        app.wait_for(rf"handled {RECORDS - 1}\b", 30)
        status, health = _get(port, "/healthz")
        assert status == 503, health
        reasons = health["reasons"]
        assert isinstance(reasons, list)
        assert any(str(r).startswith("hang: ") for r in reasons), reasons
        assert not any("innocent" in str(r) for r in reasons), reasons
        _, described = _get(port, "/status")
        workers: list[dict[str, object]] = described["workers"]  # type: ignore[assignment]
        stuck = {w["name"]: w.get("stuck_threads") for w in workers}
        assert stuck["hang"] == 1, described
        sent = time.monotonic()
        code = app.stop(signal.SIGTERM, timeout=30)
        took = time.monotonic() - sent
    assert code == 1, app.log
    assert took < 3 + 1.0, f"exited {took:.1f}s after SIGTERM"
    abandoned = [line for line in app.log.splitlines() if "abandoned handler" in line]
    assert abandoned, app.log
    assert all("abandoned handler hang for" in line for line in abandoned), abandoned
    assert len([line for line in app.log.splitlines() if "handled" in line]) == RECORDS
    assert await committed_offsets(bootstrap, f"{topic}-group", topic, 1) == {0: RECORDS}
    hung = await committed_offsets(bootstrap, f"{hang}-group", hang, 1)
    assert (hung[0] or 0) == 0  # never past the record that hangs


async def test_a_hanging_def_periodic_task_starves_neither_a_consumer_nor_another_task(
    bootstrap: str, producer: AIOKafkaProducer, app_env: dict[str, str], unique: str
) -> None:
    topic = f"{unique}-innocent"
    await create_topic(bootstrap, topic, 1)
    env = {**app_env, "STARVING_TOPIC": topic}
    with AppProcess(
        "tests.apps.starving_periodic:app", "--http-port", "0", "--shutdown-timeout", "3", env=env
    ) as app:
        port = int(re.search(r"http://[^:]+:(\d+)", app.wait_for("operations endpoint on"))[1])
        # the hanging task timed out and is blocked: its one stuck thread is its bound
        app.wait_for(r"hang: 1 handler thread\(s\) still running past their timeout", 30)
        ticked = len([line for line in app.log.splitlines() if "ticked" in line])
        for index in range(RECORDS):  # more than asyncio's default pool has threads
            await producer.send_and_wait(topic, b"%d" % index, partition=0)
        app.wait_for(rf"handled {RECORDS - 1}\b", 30)
        app.wait_for("ticked", 30, count=ticked + 4)  # the other task goes on ticking
        status, health = _get(port, "/healthz")
        assert status == 503, health
        reasons = health["reasons"]
        assert isinstance(reasons, list)
        assert any(str(r).startswith("hang: ") for r in reasons), reasons
        assert not any(str(r).startswith(("ticker", "innocent")) for r in reasons), reasons
        _, described = _get(port, "/status")
        workers: list[dict[str, object]] = described["workers"]  # type: ignore[assignment]
        stuck = {w["name"]: w.get("stuck_threads") for w in workers}
        assert stuck["hang"] == 1, described
        sent = time.monotonic()
        code = app.stop(signal.SIGTERM, timeout=30)
        took = time.monotonic() - sent
    assert code == 1, app.log
    assert took < 3 + 1.0, f"exited {took:.1f}s after SIGTERM"
    abandoned = [line for line in app.log.splitlines() if "abandoned" in line]
    assert abandoned, app.log
    assert all("abandoned periodic task hang for tick" in line for line in abandoned), abandoned
    assert await committed_offsets(bootstrap, f"{topic}-group", topic, 1) == {0: RECORDS}
