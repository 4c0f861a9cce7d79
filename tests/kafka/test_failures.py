"""Error handling end to end: a `taskflow run` child meets messages it cannot handle.

The recorder app (tests/apps/recorder.py) fails on one chosen value. Records go to chosen
partitions, so each test knows which partition a failure should hold back and which it must not.
"""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord

from tests._process import AppProcess, wait_until
from tests._tansu import committed_offsets, create_topic

GROUP = "recorder"  # the recorder app's name, so its group
WAIT = 30.0  # seconds: the bound of every wait


class Sent:
    """What a test published: values and offsets per partition."""

    def __init__(self) -> None:
        self.offsets: dict[int, list[int]] = {}
        self.values: dict[tuple[int, int], str] = {}

    async def send(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        partition: int,
        value: bytes,
        key: bytes = b"k",
        headers: list[tuple[str, bytes]] | None = None,
    ) -> int:
        meta = await producer.send_and_wait(
            topic, value, key=key, partition=partition, headers=headers
        )
        self.offsets.setdefault(partition, []).append(meta.offset)
        self.values[partition, meta.offset] = value.decode(errors="replace")
        return int(meta.offset)

    def ends(self) -> dict[int, int]:
        """The offset after the last record of each partition: everything committed."""
        return {p: max(offsets) + 1 for p, offsets in self.offsets.items()}


def handled(out: Path) -> list[tuple[int, int, str, str]]:
    """(partition, offset, key, value) of each handled record, in the order handled."""
    if not out.exists():
        return []
    rows = []
    for line in out.read_text().splitlines():
        _pid, _topic, partition, offset, key, value = line.split(" ", 5)
        rows.append((int(partition), int(offset), key, value))
    return rows


def offsets_on(rows: list[tuple[int, int, str, str]], partition: int) -> list[int]:
    return [offset for p, offset, _, _ in rows if p == partition]


async def read_topic(bootstrap: str, topic: str, count: int) -> list[ConsumerRecord]:
    """The first `count` records of `topic` (all partitions), checking that there are no more."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        records: list[ConsumerRecord] = []
        async with asyncio.timeout(WAIT):
            while len(records) < count:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    records.extend(batch)
        total = sum(consumer.highwater(tp) or 0 for tp in consumer.assignment())
        assert total == count, f"{topic} holds {total} records, expected {count}"
        return records
    finally:
        await consumer.stop()


async def wait_for_commits(bootstrap: str, topic: str, expected: dict[int, int | None]) -> None:
    """Poll the group's committed offsets (another process commits them) until they match."""
    committed: dict[int, int | None] = {}
    try:
        async with asyncio.timeout(WAIT):
            # Polled: only the broker knows what the other process committed.
            while (committed := await committed_offsets(bootstrap, GROUP, topic, 4)) != expected:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"committed {committed}, expected {expected}") from None


def recorder_env(app_env: dict[str, str], topic: str, out: Path, **extra: str) -> dict[str, str]:
    return {**app_env, "RECORDER_TOPICS": topic, "RECORDER_OUT": str(out), **extra}


def failures_of(log: str, topic: str, partition: int, offset: int) -> list[tuple[int, float]]:
    """(attempt, seconds until the next) of each logged failed attempt of one record."""
    pattern = re.compile(
        rf"{re.escape(topic)}\[{partition}\]@{offset} attempt (\d+) failed: "
        r"RuntimeError: cannot handle b'poison'; retrying in ([0-9.e+-]+)s"
    )
    return [(int(m[1]), float(m[2])) for m in pattern.finditer(log)]


async def test_an_exhausted_message_is_dead_lettered_and_the_rest_flows(
    app_env: dict[str, str],
    bootstrap: str,
    topic: str,
    unique: str,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    dlq = f"{unique}-dead"
    await create_topic(bootstrap, dlq, 1)
    sent = Sent()
    for n in range(5):
        for partition in range(4):
            await sent.send(producer, topic, partition, f"{partition}-{n}".encode())
        if n == 1:
            headers = [("trace", b"t-1"), ("trace", b"t-2"), ("raw", b"\x00\xff")]
            poison = await sent.send(producer, topic, 1, b"poison", b"poison-key", headers)
    out = tmp_path / "handled.txt"
    env = recorder_env(
        app_env,
        topic,
        out,
        RECORDER_FAIL_VALUE="poison",
        RECORDER_DLQ=dlq,
        RECORDER_MAX_ATTEMPTS="3",
    )
    with AppProcess("tests.apps.recorder:app", env=env) as app:
        [letter] = await read_topic(bootstrap, dlq, 1)
        wait_until(lambda: len(handled(out)) >= 20, WAIT, "20 handled records")
        assert app.stop(signal.SIGTERM) == 0
    assert "stopped cleanly" in app.log

    rows = handled(out)
    assert sorted((p, o) for p, o, _, _ in rows) == sorted(
        k for k in sent.values if k != (1, poison)
    )
    assert [value for _, _, _, value in rows if value == "poison"] == []
    assert offsets_on(rows, 1) == [o for o in sent.offsets[1] if o != poison]  # in order, past it

    assert (letter.key, letter.value) == (b"poison-key", b"poison")
    original, ours = letter.headers[:3], dict(letter.headers[3:])
    assert list(original) == [("trace", b"t-1"), ("trace", b"t-2"), ("raw", b"\x00\xff")]
    assert {
        name: value.decode() for name, value in ours.items() if name != "taskflow-traceback"
    } == {
        "taskflow-original-topic": topic,
        "taskflow-original-partition": "1",
        "taskflow-original-offset": str(poison),
        "taskflow-original-timestamp": ours["taskflow-original-timestamp"].decode(),
        "taskflow-consumer-group": GROUP,
        "taskflow-attempts": "3",
        "taskflow-reason": "exhausted",
        "taskflow-exception-type": "builtins.RuntimeError",
        "taskflow-exception-message": "cannot handle b'poison'",
    }
    assert int(ours["taskflow-original-timestamp"]) > 0
    trace = ours["taskflow-traceback"].decode()
    assert "in record" in trace
    assert trace.rstrip().endswith("RuntimeError: cannot handle b'poison'")

    assert [attempt for attempt, _ in failures_of(app.log, topic, 1, poison)] == [1, 2]
    assert re.search(
        rf"{re.escape(topic)}\[1\]@{poison} exhausted after 3 attempt\(s\) "
        rf"\(RuntimeError: cannot handle b'poison'\); sent to {re.escape(dlq)}",
        app.log,
    )
    assert await committed_offsets(bootstrap, GROUP, topic, 4) == sent.ends()


@pytest.mark.parametrize("ordering", ["partition", "key"])
async def test_without_dead_letters_a_failing_message_holds_its_partition(
    app_env: dict[str, str],
    bootstrap: str,
    topic: str,
    producer: AIOKafkaProducer,
    tmp_path: Path,
    ordering: str,
) -> None:
    sent = Sent()
    for n in range(5):
        for partition in (0, 2, 3):
            await sent.send(producer, topic, partition, f"{partition}-{n}".encode())
    await sent.send(producer, topic, 1, b"1-0", b"a")
    await sent.send(producer, topic, 1, b"1-1", b"b")
    poison = await sent.send(producer, topic, 1, b"poison", b"p")
    same_key = await sent.send(producer, topic, 1, b"1-after-same-key", b"p")
    other_keys = [await sent.send(producer, topic, 1, b"1-after-" + k, k) for k in (b"a", b"b")]
    out = tmp_path / "handled.txt"
    env = recorder_env(
        app_env, topic, out, RECORDER_FAIL_VALUE="poison", RECORDER_ORDERING=ordering
    )
    with AppProcess("tests.apps.recorder:app", env=env) as app:
        pattern = rf"{re.escape(topic)}\[1\]@{poison} attempt 5 failed"
        app.wait_for(pattern, WAIT)
        # Key ordering lets the other keys of the held partition pass the failing record.
        passing = other_keys if ordering == "key" else []
        expected = {(p, o) for (p, o) in sent.values if p != 1} | {(1, 0), (1, 1)}
        expected |= {(1, o) for o in passing}
        wait_until(lambda: len(handled(out)) >= len(expected), WAIT, "the other records")
        # The held partition commits up to the failing record, and never past it.
        await wait_for_commits(bootstrap, topic, {**sent.ends(), 1: poison})
        assert app.stop(signal.SIGTERM) == 0
    assert "stopped cleanly" in app.log

    rows = handled(out)
    assert sorted((p, o) for p, o, _, _ in rows) == sorted(expected)
    for key in {k for p, _, k, _ in rows if p == 1}:  # each key in order
        on_key = [o for p, o, k, _ in rows if (p, k) == (1, key)]
        assert on_key == sorted(on_key)
    assert same_key not in offsets_on(rows, 1)
    failures = failures_of(app.log, topic, 1, poison)
    attempts = [attempt for attempt, _ in failures]
    assert attempts == list(range(1, len(attempts) + 1))
    assert len(attempts) >= 5
    delays = [delay for _, delay in failures][:5]  # 50 ms doubling, up to the 1 s maximum
    assert delays == sorted(delays)
    assert len(set(delays)) == 5
    assert not re.search(r"(exhausted|rejected) after \d+ attempt\(s\)", app.log)
    assert await committed_offsets(bootstrap, GROUP, topic, 4) == {**sent.ends(), 1: poison}


@pytest.mark.parametrize("dead_letters", [True, False], ids=["dead-letters", "no-dead-letters"])
async def test_a_payload_that_does_not_decode_is_rejected_at_once(
    app_env: dict[str, str],
    bootstrap: str,
    topic: str,
    unique: str,
    producer: AIOKafkaProducer,
    tmp_path: Path,
    dead_letters: bool,
) -> None:
    sent = Sent()
    for n in range(3):
        for partition in range(4):
            await sent.send(producer, topic, partition, b'{"n":%d}' % n)
        if n == 0:
            not_json = await sent.send(producer, topic, 2, b"not json", b"bad-1")
            not_dict = await sent.send(producer, topic, 3, b"[1,2]", b"bad-2")
    bad = {(2, not_json), (3, not_dict)}
    out = tmp_path / "handled.txt"
    env = recorder_env(app_env, topic, out, RECORDER_MAX_ATTEMPTS="3")
    dlq = f"{unique}-dead"
    if dead_letters:
        await create_topic(bootstrap, dlq, 1)
        env["RECORDER_DLQ"] = dlq
    with AppProcess("tests.apps.kafka_dict_recorder:app", env=env) as app:
        letters = await read_topic(bootstrap, dlq, 2) if dead_letters else []
        wait_until(lambda: len(handled(out)) >= 12, WAIT, "12 handled records")
        await wait_for_commits(bootstrap, topic, sent.ends())
        assert app.stop(signal.SIGTERM) == 0
    assert "stopped cleanly" in app.log

    rows = handled(out)
    assert sorted((p, o) for p, o, _, _ in rows) == sorted(set(sent.values) - bad)
    assert "attempt 1 failed" not in app.log  # never retried
    for partition, offset in sorted(bad):
        where = re.escape(f"{topic}[{partition}]@{offset}")
        if dead_letters:
            assert re.search(rf"{where} rejected after 1 attempt\(s\) \(DecodeError: ", app.log)
        else:
            assert re.search(rf"⊘ {where} rejected and skipped: DecodeError: payload of ", app.log)
    if dead_letters:
        by_key = {letter.key: letter for letter in letters}
        assert sorted(by_key) == [b"bad-1", b"bad-2"]
        assert (by_key[b"bad-1"].value, by_key[b"bad-2"].value) == (b"not json", b"[1,2]")
        for key, (partition, offset) in zip([b"bad-1", b"bad-2"], sorted(bad), strict=True):
            headers = {name: value.decode() for name, value in by_key[key].headers}
            assert headers["taskflow-attempts"] == "1"
            assert headers["taskflow-reason"] == "rejected"
            assert headers["taskflow-exception-type"] == "taskflow.exceptions.DecodeError"
            assert headers["taskflow-original-partition"] == str(partition)
            assert headers["taskflow-original-offset"] == str(offset)
        assert (
            "is not valid JSON"
            in dict(by_key[b"bad-1"].headers)["taskflow-exception-message"].decode()
        )
        assert (
            "is a JSON list, expected dict"
            in dict(by_key[b"bad-2"].headers)["taskflow-exception-message"].decode()
        )
    assert await committed_offsets(bootstrap, GROUP, topic, 4) == sent.ends()
