"""Batch consumers on a real broker, with the app under test running as `taskflow run`.

The app (`tests.apps.batch_recorder`) writes every record of a batch it handled to a file, the
batch's lines in one write. The scenarios:

- SIGKILLed twice mid-stream and restarted: nothing is lost, nothing below a committed offset runs
  again, and what runs twice is bounded by the batches in flight at the kills;
- a `BatchError` for one record commits exactly the records before it, however often that record
  is retried, and a SIGTERM then leaves it uncommitted;
- with ``idempotent=True`` a SIGKILL long after the last commit repeats only the batches in
  flight: the partition ledger skips the rest of what ran and was not committed.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from tests._process import AppProcess, count_lines
from tests._redis import REDIS_URL
from tests._tansu import committed_offsets
from tests.kafka.test_delivery import (
    background,
    exit_code,
    high_watermarks,
    produce,
    until,
    wait_assigned,
)

BATCH_APP = "tests.apps.batch_recorder:app"
PARTITIONS = 4
STREAM = 10_000
BATCH = 100

Position = tuple[int, int]  # (partition, offset)


@pytest.fixture
def batch_env(app_env: dict[str, str], topic: str, unique: str, tmp_path: Path) -> dict[str, str]:
    return {
        **app_env,
        "BATCH_TOPIC": topic,
        "BATCH_GROUP": f"{unique}-group",
        "BATCH_OUT": str(tmp_path / "handled.txt"),
        "BATCH_SIZE": str(BATCH),
        "BATCH_DELAY_MS": "20",
        "TASKFLOW_COMMIT_INTERVAL": "0",
    }


def handled(env: dict[str, str]) -> list[Position]:
    path = Path(env["BATCH_OUT"])
    if not path.exists():
        return []
    lines = (line.split(" ") for line in path.read_text().splitlines())
    return [(int(partition), int(offset)) for _pid, partition, offset, _value in lines]


def uncommitted(done: list[Position], committed: dict[int, int | None]) -> set[Position]:
    """Positions handled but at or above their partition's committed offset."""
    return {(p, o) for p, o in done if o >= (committed[p] or 0)}


def repeated(done: list[Position]) -> dict[Position, int]:
    return {position: n for position, n in Counter(done).items() if n > 1}


async def test_a_batch_consumer_sigkilled_twice_loses_nothing_and_repeats_only_batches_in_flight(
    batch_env: dict[str, str], bootstrap: str, topic: str, producer: AIOKafkaProducer
) -> None:
    group, out = batch_env["BATCH_GROUP"], Path(batch_env["BATCH_OUT"])
    at_kills: list[set[Position]] = []
    async with background(produce(producer, topic, STREAM)) as producing:
        for kill in range(2):
            with AppProcess(BATCH_APP, env=batch_env) as app:
                await wait_assigned(app)
                goal = count_lines(out) + 1500
                await until(lambda goal=goal: count_lines(out) >= goal, 60, "progress")  # type: ignore[misc]
                assert await exit_code(app, signal.SIGKILL) == -signal.SIGKILL, f"kill {kill}"
            committed = await committed_offsets(bootstrap, group, topic, PARTITIONS)
            done = handled(batch_env)
            assert len(set(done)) < STREAM, "the kill did not come mid-stream"
            below = [(p, o) for p in range(PARTITIONS) for o in range(committed[p] or 0)]
            assert set(below) <= set(done), "an offset was committed before it was handled"
            at_kills.append(uncommitted(done, committed))
        with AppProcess(BATCH_APP, env=batch_env) as last:
            produced = set(await producing)
            await until(lambda: set(handled(batch_env)) >= produced, 90, "every record handled")
            assert await exit_code(last, signal.SIGTERM) == 0

    done = handled(batch_env)
    assert set(done) == produced
    assert await committed_offsets(bootstrap, group, topic, PARTITIONS) == high_watermarks(produced)
    twice = repeated(done)
    # Only what was handled and not yet committed at a kill runs again...
    assert set(twice) <= set().union(*at_kills)
    assert set(twice.values()) <= {2, 3}
    # ...and with commits at once, that is the batches in flight: at most two per partition.
    assert all(len(lost) <= 2 * PARTITIONS * BATCH for lost in at_kills)
    print(f"\nbatches SIGKILL x2: {len(twice)} record(s) handled twice; {STREAM} records")


async def test_batch_error_commits_exactly_the_records_before_the_failed_one(
    batch_env: dict[str, str], bootstrap: str, topic: str, producer: AIOKafkaProducer
) -> None:
    group = batch_env["BATCH_GROUP"]
    env = {**batch_env, "BATCH_FAIL_VALUE": "30", "BATCH_DELAY_MS": "0"}
    for number in range(50):
        await producer.send_and_wait(topic, str(number).encode(), partition=0)
    with AppProcess(BATCH_APP, env=env) as app:
        await asyncio.to_thread(app.wait_for, r"cannot store b'30'.*retrying in", 60)
        await asyncio.to_thread(app.wait_for, r"attempt 3 failed", 30)
        committed = await committed_offsets(bootstrap, group, topic, PARTITIONS)
        assert committed == {0: 30, 1: None, 2: None, 3: None}
        assert await exit_code(app, signal.SIGTERM) == 0
    assert sorted(handled(env)) == [(0, offset) for offset in range(30)]
    assert await committed_offsets(bootstrap, group, topic, PARTITIONS) == committed


@pytest.mark.redis
async def test_an_idempotent_batch_consumer_repeats_only_batches_in_flight_at_a_kill(
    batch_env: dict[str, str],
    bootstrap: str,
    topic: str,
    producer: AIOKafkaProducer,
    redis: Redis,
) -> None:
    group, out = batch_env["BATCH_GROUP"], Path(batch_env["BATCH_OUT"])
    # Commits rarely: most of what ran at the kill is not committed, and only the ledger
    # keeps it from running again.
    # Batches of 0-200 ms: what ran just before the kill and is not yet in the ledger (it goes
    # with the next fetch's claim, or 20 ms later) is about one batch per partition.
    env = {
        **batch_env,
        "BATCH_DELAY_MS": "200",
        "BATCH_IDEMPOTENT": "1",
        "TASKFLOW_REDIS_URL": REDIS_URL,
        "TASKFLOW_COMMIT_INTERVAL": "60",
    }
    produced = set(await produce(producer, topic, 4000, chunk=1000, pause=0))
    with AppProcess(BATCH_APP, env=env) as app:
        await wait_assigned(app)
        await until(lambda: count_lines(out) >= 2000, 60, "progress")
        assert await exit_code(app, signal.SIGKILL) == -signal.SIGKILL
    committed = await committed_offsets(bootstrap, group, topic, PARTITIONS)
    ran_uncommitted = uncommitted(handled(env), committed)
    with AppProcess(BATCH_APP, env=env) as again:
        await until(lambda: set(handled(env)) >= produced, 60, "every record handled")
        assert await exit_code(again, signal.SIGTERM) == 0

    done = handled(env)
    assert set(done) == produced
    assert await committed_offsets(bootstrap, group, topic, PARTITIONS) == high_watermarks(produced)
    twice = repeated(done)
    assert set(twice) <= ran_uncommitted
    assert len(ran_uncommitted) > 2 * PARTITIONS * BATCH, "the kill came too soon to tell"
    # The batches running at the kill, and those that finished just before it (their ledger
    # write on its way): a few per partition, not everything uncommitted.
    assert len(twice) <= 2 * PARTITIONS * BATCH
    print(
        f"\nidempotent batches: {len(twice)} record(s) handled twice of {len(ran_uncommitted)} "
        "handled and not committed at the kill"
    )
