"""Retry topics on a real broker, with the app under test running as ``taskflow run``.

1,000 records, of which 100 fail twice and then succeed and 10 always fail, through
``retry_topics=[1, 2]`` (tests/apps/retry_stages.py): the failures do not hold the stream, each
retry runs once its stage's delay has passed, the 10 land in the dead-letter topic with 3 attempts
and the coordinates of the original, and every offset the groups committed was handled. A
process killed (SIGKILL) during the retries and started again loses none of them. The lag
``/status`` shows for a stage partition counts the copies waiting there for their due time.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from tests._process import AppProcess, wait_until
from tests._tansu import committed_offsets, create_topic
from tests.apps.retry_stages import fails
from tests.kafka.test_examples_kafka import free_port, get

APP = "tests.apps.retry_stages:app"
PARTITIONS = 4
STAGE_PARTITIONS = 2
COUNT = 1000
RETRIED = {i for i in range(COUNT) if i % 10 == 0}  # fail twice, then succeed
DOOMED = {i for i in range(COUNT) if i % 100 == 5}  # always fail
TOLERANCE = 0.002  # the log line's seconds are rounded to milliseconds, as the due time is

Coordinates = tuple[int, int]  # (partition, offset)


@dataclass(frozen=True, slots=True)
class Attempt:
    """One line of the app's output: one attempt at one record."""

    pid: int
    ident: int
    attempt: int
    topic: str
    ok: bool
    at: float


def read_attempts(path: Path) -> list[Attempt]:
    if not path.exists():
        return []
    attempts = []
    for line in path.read_text().splitlines():
        pid, ident, attempt, topic, _partition, _offset, outcome, at = line.split(" ")
        attempts.append(
            Attempt(int(pid), int(ident), int(attempt), topic, outcome == "ok", float(at))
        )
    return attempts


@dataclass(frozen=True, slots=True)
class Topics:
    main: str
    stage1: str
    stage2: str
    dlq: str
    group: str

    @property
    def stage_group(self) -> str:
        return f"{self.group}.retry"


async def _topics(bootstrap: str, unique: str) -> Topics:
    main = f"{unique}-orders"
    topics = Topics(main, f"{main}.retry.1s", f"{main}.retry.2s", f"{main}.DLQ", f"{unique}-g")
    await create_topic(bootstrap, topics.main, PARTITIONS)
    await create_topic(bootstrap, topics.stage1, STAGE_PARTITIONS)
    await create_topic(bootstrap, topics.stage2, STAGE_PARTITIONS)
    await create_topic(bootstrap, topics.dlq, 1)
    return topics


async def _produce(producer: AIOKafkaProducer, topic: str) -> dict[int, Coordinates]:
    """Write ids 0..COUNT-1 as ``{"id": n}``, keyed; return where each went."""
    sent = [
        await producer.send(topic, f'{{"id": {i}}}'.encode(), key=str(i).encode())
        for i in range(COUNT)
    ]
    written = {}
    for ident, future in enumerate(sent):
        metadata = await future
        written[ident] = (metadata.partition, metadata.offset)
    return written


async def read_topic(
    bootstrap: str, topic: str, partitions: int, at_least: int, timeout: float = 30.0
) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of `topic`, read without a group, once there are `at_least` of them."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        await consumer.seek_to_beginning()
        async with asyncio.timeout(timeout):
            while len(records) < at_least:
                batches = await consumer.getmany(timeout_ms=200)
                records += [record for batch in batches.values() for record in batch]
            # Whatever else is there (a duplicate) arrives within a few more fetches.
            for _ in range(3):
                batches = await consumer.getmany(timeout_ms=200)
                records += [record for batch in batches.values() for record in batch]
    finally:
        with contextlib.suppress(Exception):
            await consumer.stop()
    return records


def headers(record: ConsumerRecord[bytes, bytes]) -> dict[str, str]:
    return {name: value.decode() for name, value in record.headers}


async def _ends(bootstrap: str, topic: str, partitions: int, at_least: int) -> dict[int, int]:
    """One past the last offset of each partition of `topic`, as read from it (a broker's
    "latest" offset may read low)."""
    ends = dict.fromkeys(range(partitions), 0)
    for record in await read_topic(bootstrap, topic, partitions, at_least):
        ends[record.partition] = max(ends[record.partition], record.offset + 1)
    return ends


async def _all_committed(bootstrap: str, topics: Topics, timeout: float = 60.0) -> None:
    """Wait until both groups committed every record of their topics."""
    failed = len(RETRIED | DOOMED)
    wanted = [
        (topics.group, topics.main, PARTITIONS, COUNT),
        (topics.stage_group, topics.stage1, STAGE_PARTITIONS, failed),
        (topics.stage_group, topics.stage2, STAGE_PARTITIONS, failed),
    ]
    for group, topic, partitions, at_least in wanted:
        ends = await _ends(bootstrap, topic, partitions, at_least)
        committed: dict[int, int | None] = {}
        try:
            async with asyncio.timeout(timeout):
                while {p: committed.get(p) or 0 for p in ends} != ends:
                    committed = await committed_offsets(bootstrap, group, topic, partitions)
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise AssertionError(f"{group} committed {committed} of {topic}, not {ends}") from None


def _finished(out: Path) -> bool:
    """True once each retried record succeeded and each doomed one failed its third attempt."""
    attempts = read_attempts(out)
    succeeded = {a.ident for a in attempts if a.attempt == 3 and a.ok}
    exhausted = {a.ident for a in attempts if a.attempt == 3 and not a.ok}
    return succeeded >= RETRIED and exhausted >= DOOMED


async def _check_dead_letters(
    bootstrap: str, topics: Topics, written: dict[int, Coordinates]
) -> list[ConsumerRecord[bytes, bytes]]:
    letters = await read_topic(bootstrap, topics.dlq, 1, at_least=len(DOOMED))
    by_id: dict[int, list[dict[str, str]]] = defaultdict(list)
    for letter in letters:
        by_id[int(letter.key or b"-1")].append(headers(letter))
    assert set(by_id) == DOOMED
    for ident, found in by_id.items():
        for ours in found:
            assert ours["taskflow-original-topic"] == topics.main
            coordinates = (
                int(ours["taskflow-original-partition"]),
                int(ours["taskflow-original-offset"]),
            )
            assert coordinates == written[ident]
            assert ours["taskflow-attempts"] == "3"
            assert ours["taskflow-reason"] == "exhausted"
            assert ours["taskflow-consumer-group"] == topics.group
            assert "taskflow-due" not in ours
    return letters


async def test_failures_wait_on_retry_topics_without_holding_the_stream(
    bootstrap: str,
    app_env: dict[str, str],
    unique: str,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    topics = await _topics(bootstrap, unique)
    out = tmp_path / "attempts.txt"
    written = await _produce(producer, topics.main)
    env = {
        **app_env,
        "RETRY_STAGES_TOPIC": topics.main,
        "RETRY_STAGES_GROUP": topics.group,
        "RETRY_STAGES_DLQ": topics.dlq,
        "RETRY_STAGES_OUT": str(out),
    }
    with AppProcess(APP, env=env) as app:
        await asyncio.to_thread(wait_until, lambda: _finished(out), 120, "every retry run")
        await _all_committed(bootstrap, topics)
        app.send(signal.SIGTERM)
        code = await asyncio.to_thread(app.wait, 60)
    assert code == 0, app.log[-3000:]

    attempts = read_attempts(out)
    counts = Counter((a.ident, a.attempt) for a in attempts)
    assert {ident for ident, attempt in counts if attempt == 1} == set(range(COUNT))
    assert [key for key, n in counts.items() if n > 1] == []  # nothing ran twice
    # Every attempt the policy promises, and no other.
    for ident in range(COUNT):
        expected = 3 if ident in RETRIED | DOOMED else 1
        made = sorted(attempt for i, attempt in counts if i == ident)
        assert made == list(range(1, expected + 1)), (ident, made)
        for attempt in made:
            (run,) = [a for a in attempts if (a.ident, a.attempt) == (ident, attempt)]
            assert run.ok is not fails(ident, attempt)

    # The stream was not held: every healthy record ran before the first retry fell due.
    stage1 = await read_topic(bootstrap, topics.stage1, STAGE_PARTITIONS, at_least=110)
    assert len(stage1) == len(RETRIED | DOOMED)
    first_due = min(int(headers(r)["taskflow-due"]) for r in stage1) / 1000
    healthy = [a.at for a in attempts if a.attempt == 1 and a.ok]
    assert len(healthy) == COUNT - len(RETRIED | DOOMED)
    print(f"the last healthy record ran {first_due - max(healthy):.2f}s before the first due")
    assert max(healthy) < first_due

    # Each retry ran on its stage, after its delay.
    at = {(a.ident, a.attempt): a for a in attempts}
    for ident in RETRIED | DOOMED:
        assert at[ident, 2].topic == topics.stage1
        assert at[ident, 3].topic == topics.stage2
        assert at[ident, 2].at >= at[ident, 1].at + 1 - TOLERANCE
        assert at[ident, 3].at >= at[ident, 2].at + 2 - TOLERANCE

    letters = await _check_dead_letters(bootstrap, topics, written)
    assert len(letters) == len(DOOMED)
    assert "sent to" in app.log
    assert f"sent to {topics.stage1}, due " in app.log


async def test_a_process_killed_during_the_retries_loses_none_of_them(
    bootstrap: str,
    app_env: dict[str, str],
    unique: str,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    topics = await _topics(bootstrap, unique)
    out = tmp_path / "attempts.txt"
    written = await _produce(producer, topics.main)
    env = {
        **app_env,
        "RETRY_STAGES_TOPIC": topics.main,
        "RETRY_STAGES_GROUP": topics.group,
        "RETRY_STAGES_DLQ": topics.dlq,
        "RETRY_STAGES_OUT": str(out),
    }

    def some_second_attempts() -> bool:
        return sum(1 for a in read_attempts(out) if a.attempt == 2) >= 20

    with AppProcess(APP, env=env) as first:
        await asyncio.to_thread(wait_until, some_second_attempts, 120, "second attempts")
        first.send(signal.SIGKILL)
        await asyncio.to_thread(first.wait, 30)
    before = read_attempts(out)
    assert not _finished(out), "every retry ran before the kill: nothing was tested"

    with AppProcess(APP, env=env) as second:
        await asyncio.to_thread(wait_until, lambda: _finished(out), 120, "every retry run")
        await _all_committed(bootstrap, topics)
        second.send(signal.SIGTERM)
        code = await asyncio.to_thread(second.wait, 60)
    assert code == 0, second.log[-3000:]

    attempts = read_attempts(out)
    assert {a.ident for a in attempts if a.attempt == 1} == set(range(COUNT))
    succeeded = {a.ident for a in attempts if a.ok and a.attempt == 3}
    assert succeeded == RETRIED
    assert {a.ident for a in attempts if a.ok and a.attempt == 1} == set(range(COUNT)) - (
        RETRIED | DOOMED
    )
    assert all(a.ok is not fails(a.ident, a.attempt) for a in attempts)
    letters = await _check_dead_letters(bootstrap, topics, written)
    runs = Counter((a.ident, a.attempt) for a in attempts)
    repeated = {key: n for key, n in runs.items() if n > 1}
    print(
        f"\nSIGKILL after {len(before)} attempts: {len(attempts)} attempts in all, "
        f"{len(repeated)} (id, attempt) pairs run more than once "
        f"(by attempt: {dict(sorted(Counter(attempt for _, attempt in repeated).items()))}), "
        f"{len(letters)} dead letters for {len(DOOMED)} records"
    )


async def test_the_lag_of_a_stage_counts_the_copies_waiting_for_their_due_time(
    bootstrap: str,
    app_env: dict[str, str],
    unique: str,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    topics = await _topics(bootstrap, unique)
    due = round(time.time() * 1000) + 600_000  # ten minutes away
    for offset in range(3):
        await producer.send_and_wait(
            topics.stage1,
            f'{{"id": {offset}}}'.encode(),
            partition=0,
            headers=[
                ("taskflow-original-topic", topics.main.encode()),
                ("taskflow-original-partition", b"0"),
                ("taskflow-original-offset", str(offset).encode()),
                ("taskflow-consumer-group", topics.group.encode()),
                ("taskflow-attempts", b"1"),
                ("taskflow-due", str(due).encode()),
            ],
        )
    env = {
        **app_env,
        "RETRY_STAGES_TOPIC": topics.main,
        "RETRY_STAGES_GROUP": topics.group,
        "RETRY_STAGES_DLQ": topics.dlq,
        "RETRY_STAGES_OUT": str(tmp_path / "attempts.txt"),
    }
    port = free_port()

    def stage_partition() -> dict[str, Any] | None:
        _, body = get(f"http://127.0.0.1:{port}/status")
        workers = cast("list[dict[str, Any]]", body.get("workers", []))
        for worker in workers:
            for partition in worker["partitions"]:
                if (partition["topic"], partition["partition"]) == (topics.stage1, 0):
                    return cast("dict[str, Any]", partition)
        return None

    def held() -> bool:
        partition = stage_partition()
        return partition is not None and partition["paused"]

    with AppProcess(APP, "--http-port", str(port), env=env) as app:
        await asyncio.to_thread(wait_until, held, 30, "the stage partition paused")
        partition = stage_partition()
        assert app.stop(signal.SIGTERM) == 0
    assert partition is not None
    assert partition["lag"] == 3
    assert read_attempts(tmp_path / "attempts.txt") == []
