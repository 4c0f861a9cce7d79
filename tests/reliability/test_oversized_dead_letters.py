"""Dead letters that do not fit, through a `taskflow run` child on the real broker.

The record is over the producer's `max_request_size` (1 MiB by default) once taskflow's headers are
added. Its dead letter goes without the value, saying so, and the partition flows on.
"""

from __future__ import annotations

import hashlib
import re
import signal
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from tests._process import AppProcess, wait_until
from tests._tansu import create_topic
from tests.reliability._broker import WAIT, dead_letters, handled, wait_for_commit

pytestmark = pytest.mark.kafka

BIG = 1_500_000  # bytes: Tansu takes records of 10 MB and more; the producer's default is 1 MiB
HEALTHY = 100


async def test_a_rejected_record_too_large_to_dead_letter_whole_does_not_stall_its_partition(
    app_env: dict[str, str], bootstrap: str, unique: str, tmp_path: Path
) -> None:
    topic, dlq = f"{unique}-orders", f"{unique}-dead"
    await create_topic(bootstrap, topic, 1)
    await create_topic(bootstrap, dlq, 1)
    big = b"<not json> " + b"x" * (BIG - 11)  # the dict handler rejects it: a DecodeError
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=2 * BIG)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, big, key=b"big-key", headers=[("trace", b"t-1")])
        for n in range(HEALTHY):
            await producer.send_and_wait(topic, b'{"n": %d}' % n, key=b"k")
    finally:
        await producer.stop()
    assert meta.offset == 0
    out = tmp_path / "handled.txt"
    env = {**app_env, "RECORDER_TOPICS": topic, "RECORDER_OUT": str(out), "RECORDER_DLQ": dlq}

    with AppProcess("tests.apps.kafka_dict_recorder:app", env=env) as app:
        started = time.monotonic()
        wait_until(lambda: len(handled(out)) >= HEALTHY, WAIT, f"{HEALTHY} handled records")
        took = time.monotonic() - started
        [letter] = await dead_letters(bootstrap, dlq)
        await wait_for_commit(bootstrap, topic, HEALTHY + 1)
        assert app.stop(signal.SIGTERM) == 0

    assert handled(out) == list(range(1, HEALTHY + 1)), f"handled in {took:.1f}s"
    assert letter.key == b"big-key"
    assert letter.value in (b"", None)
    original, ours = letter.headers[:1], dict(letter.headers[1:])
    assert list(original) == [("trace", b"t-1")]
    assert ours["taskflow-original-offset"] == b"0"
    assert ours["taskflow-original-topic"] == topic.encode()
    assert ours["taskflow-reason"] == b"rejected"
    assert ours["taskflow-exception-type"] == b"taskflow.exceptions.DecodeError"
    assert ours["taskflow-original-size"] == str(BIG).encode()
    assert ours["taskflow-original-sha256"] == hashlib.sha256(big).hexdigest().encode()
    assert b"max_request_size 1048576" in ours["taskflow-value-omitted"]
    assert re.search(
        rf"{re.escape(topic)}\[0\]@0 rejected after 1 attempt\(s\) \(DecodeError: .*\); "
        rf"sent to {re.escape(dlq)} without its value \({BIG} bytes\): too large",
        app.log,
    )
    assert "dead-lettering" not in app.log  # never a failed try at it
    assert "stopped cleanly" in app.log


async def test_a_dead_letter_the_producer_can_never_send_is_skipped_with_an_error(
    app_env: dict[str, str], bootstrap: str, unique: str, tmp_path: Path
) -> None:
    topic, dlq = f"{unique}-orders", f"{unique}-dead"
    await create_topic(bootstrap, topic, 1)
    await create_topic(bootstrap, dlq, 1)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"not json", key=b"bad")
        for n in range(HEALTHY):
            await producer.send_and_wait(topic, b'{"n": %d}' % n, key=b"k")
    finally:
        await producer.stop()
    out = tmp_path / "handled.txt"
    env = {
        **app_env,
        "RECORDER_TOPICS": topic,
        "RECORDER_OUT": str(out),
        "RECORDER_DLQ": dlq,
        # Less than taskflow's own headers: no form of the dead letter fits.
        "TASKFLOW_KAFKA_MAX_REQUEST_SIZE": "400",
    }

    with AppProcess("tests.apps.kafka_dict_recorder:app", env=env) as app:
        wait_until(lambda: len(handled(out)) >= HEALTHY, WAIT, f"{HEALTHY} handled records")
        await wait_for_commit(bootstrap, topic, HEALTHY + 1)
        assert app.stop(signal.SIGTERM) == 0

    assert handled(out) == list(range(1, HEALTHY + 1))
    where = re.escape(f"{topic}[0]@0")
    [line] = [line for line in app.log.splitlines() if "its dead letter can never be" in line]
    assert " ERROR " in line
    assert re.search(
        rf"{where} rejected after 1 attempt\(s\) \(DecodeError: .*\); its dead letter can never "
        rf"be written to {re.escape(dlq)} \(RecordTooLarge: .*\), so it is skipped: it stays in "
        rf"{where} until retention removes it",
        line,
    )
    assert "dead-lettering" not in app.log  # never a failed try at it
    assert "stopped cleanly" in app.log
