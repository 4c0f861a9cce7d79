"""The Kafka broker end to end: a `taskflow run` child consumes, commits, and stops cleanly."""

from __future__ import annotations

import signal
from pathlib import Path

from aiokafka import AIOKafkaProducer

from tests._process import AppProcess, count_lines, wait_until
from tests._tansu import committed_offsets, create_topic


async def test_consumes_commits_and_stops_cleanly(
    app_env: dict[str, str],
    bootstrap: str,
    topic: str,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    for number in range(200):
        await producer.send(topic, str(number).encode(), key=f"k{number % 17}".encode())
    await producer.flush()
    out = tmp_path / "handled.txt"
    env = {**app_env, "RECORDER_TOPICS": topic, "RECORDER_OUT": str(out)}
    with AppProcess("tests.apps.recorder:app", env=env) as app:
        wait_until(lambda: count_lines(out) >= 200, 30, "200 handled messages")
        assert app.stop(signal.SIGTERM) == 0
    assert "stopped cleanly" in app.log
    offsets = [line.split()[2:4] for line in out.read_text().splitlines()]
    assert len(offsets) == len({tuple(o) for o in offsets}) == 200
    committed = await committed_offsets(bootstrap, "recorder", topic, 4)
    per_partition = {p: sum(1 for part, _ in offsets if int(part) == p) for p in range(4)}
    assert committed == per_partition


async def test_one_registration_consumes_several_topics_in_one_group(
    app_env: dict[str, str],
    bootstrap: str,
    unique: str,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    orders, refunds = f"{unique}-orders", f"{unique}-refunds"
    for name in (orders, refunds):
        await create_topic(bootstrap, name, 2)
    for number in range(20):
        await producer.send(orders, b"order-%d" % number, key=b"k%d" % number)
        await producer.send(refunds, b"refund-%d" % number, key=b"k%d" % number)
    await producer.flush()
    out = tmp_path / "handled.txt"
    env = {**app_env, "RECORDER_TOPICS": f"{orders},{refunds}", "RECORDER_OUT": str(out)}
    with AppProcess("tests.apps.recorder:app", env=env) as app:
        wait_until(lambda: count_lines(out) >= 40, 30, "40 handled messages")
        assert app.stop(signal.SIGTERM) == 0
    topics = [line.split()[1] for line in out.read_text().splitlines()]
    assert sorted(topics) == sorted([orders] * 20 + [refunds] * 20)
    for name in (orders, refunds):
        committed = await committed_offsets(bootstrap, "recorder", name, 2)
        assert sum(offset or 0 for offset in committed.values()) == 20
