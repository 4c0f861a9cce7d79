"""`taskflow dlq replay` against a real Kafka-protocol broker, as real processes.

A `taskflow run` app (tests/apps/dead_letters.py) dead-letters records; then, "fixed" (its
``DEAD_LETTERS_FIXED``), it consumes the original topic again and writes down what it handles,
while ``taskflow dlq replay`` runs, is killed or interrupted, and runs again.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from taskflow.message import Message
from taskflow.workers.dead_letter import retry_headers
from tests._process import AppProcess, wait_until
from tests._tansu import committed_offsets, create_topic

ROOT = Path(__file__).resolve().parent.parent.parent
APP = "tests.apps.dead_letters:app"


class Replay:
    """One ``taskflow dlq replay APP ARGS`` child, its stdout read line by line as it comes."""

    def __init__(self, env: dict[str, str], *args: str, app: str = APP) -> None:
        base = {k: v for k, v in os.environ.items() if not k.startswith("TASKFLOW_")}
        base.pop("PYTHONASYNCIODEBUG", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "taskflow", "dlq", "replay", app, *args],
            cwd=ROOT,
            env={**base, **env, "PYTHONUNBUFFERED": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            encoding="utf-8",
        )
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.errors), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str] | None, lines: list[str]) -> None:
        assert stream is not None
        for line in stream:
            lines.append(line.rstrip("\n"))

    def count(self, prefix: str) -> int:
        return sum(1 for line in list(self.lines) if line.startswith(prefix))

    def wait(self, timeout: float = 90) -> tuple[int, list[str], str]:
        """Its exit code, stdout lines and stderr."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"dlq replay did not end:\n{self.lines[-20:]}") from None
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return self.proc.returncode, self.lines, "\n".join(self.errors)


async def run_replay(env: dict[str, str], *args: str, app: str = APP) -> tuple[int, list[str], str]:
    replay = Replay(env, *args, app=app)
    return await asyncio.to_thread(replay.wait)


def steps(lines: list[str], outcome: str) -> list[str]:
    """The lines about one dead letter each that start with `outcome` (not the summary)."""
    return [line for line in lines if line.startswith(outcome + " ") and " to " in line]


def group_of(lines: list[str]) -> str:
    """The group the first line names."""
    return lines[0].split(" group ")[1].split(" ")[0]


def rejected_headers(topic: str) -> list[tuple[str, bytes]]:
    """The fewest headers a dead letter of `topic`[0] needs to be replayed: where it came from
    and why."""
    return [
        ("taskflow-original-topic", topic.encode()),
        ("taskflow-original-partition", b"0"),
        ("taskflow-reason", b"rejected"),
    ]


async def rejected_by_hand(
    bootstrap: str, producer: AIOKafkaProducer, dlq: str, topic: str, count: int
) -> str:
    """`dlq`, made with one partition and `count` dead letters of `topic`[0] written by hand
    (values ``reject 0``, ``reject 1``…)."""
    await create_topic(bootstrap, dlq, 1)
    for number in range(count):
        await producer.send_and_wait(
            dlq, f"reject {number}".encode(), headers=rejected_headers(topic)
        )
    return dlq


Record = tuple[int, bytes | None, bytes | None, dict[str, bytes]]


async def records(bootstrap: str, topic: str) -> list[Record]:
    """Every record of `topic` now: (partition, key, value, headers)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        await consumer.topics()
        numbers = sorted(consumer.partitions_for_topic(topic) or ())
        partitions = [TopicPartition(topic, number) for number in numbers]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        found: list[Record] = []
        left = set(partitions)
        ends: dict[TopicPartition, int] = {}
        while left:
            fetched = await consumer.getmany(*left, timeout_ms=500)
            for tp in sorted(left):
                highwater = consumer.highwater(tp)
                if highwater is None:
                    continue
                end = ends.setdefault(tp, highwater)
                for r in fetched.get(tp, []):
                    if r.offset < end:
                        found.append((tp.partition, r.key, r.value, dict(r.headers)))
                if await consumer.position(tp) >= end:
                    left.discard(tp)
                    consumer.pause(tp)
        return found
    finally:
        await consumer.stop()


@contextmanager
def dead_lettering(env: dict[str, str], dlq: str, count: int) -> Iterator[None]:
    """Run the app until it has sent `count` dead letters to `dlq`, then stop it."""
    with AppProcess(APP, env=env) as app:
        yield
        app.wait_for(f"sent to {dlq}", count=count, timeout=60)
        assert app.stop(signal.SIGTERM) == 0


def handled(out: Path) -> list[tuple[str, str]]:
    """What the fixed app handled: (value, replayed-from)."""
    if not out.exists():
        return []
    return [tuple(line.rsplit(" ", 1)) for line in out.read_text().splitlines()]  # type: ignore[misc]


@pytest.fixture
def dlq_env(app_env: dict[str, str], topic: str, unique: str, tmp_path: Path) -> dict[str, str]:
    return {
        **app_env,
        "DEAD_LETTERS_TOPIC": topic,
        "DEAD_LETTERS_DLQ": f"{unique}-dead",
        "DEAD_LETTERS_GROUP": f"{unique}-group",
        "DEAD_LETTERS_OUT": str(tmp_path / "handled.txt"),
    }


async def publish(producer: AIOKafkaProducer, topic: str, values: list[str]) -> None:
    for number, value in enumerate(values):
        await producer.send_and_wait(
            topic,
            value.encode(),
            key=f"k{number}".encode(),
            headers=[("trace", f"t{number}".encode()), ("content-type", b"text/plain")],
            partition=number % 4,
        )


async def test_a_replay_killed_halfway_and_run_again_has_each_dead_letter_handled_once(
    dlq_env: dict[str, str],
    bootstrap: str,
    topic: str,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    dlq, out = dlq_env["DEAD_LETTERS_DLQ"], Path(dlq_env["DEAD_LETTERS_OUT"])
    await create_topic(bootstrap, dlq, 2)
    values = [f"reject {n}" if n % 2 else f"fail {n}" for n in range(50)]
    with dead_lettering(dlq_env, dlq, 50):
        await publish(producer, topic, values)
    assert handled(out) == []
    fixed = {**dlq_env, "DEAD_LETTERS_FIXED": "1"}
    with AppProcess(APP, env=fixed) as app:
        app.wait_for(r"→ consuming ")
        replay = Replay(dlq_env, dlq, "--rate", "10/s")
        await asyncio.to_thread(
            wait_until, lambda: replay.count("replayed ") >= 15, 60, "15 dead letters replayed"
        )
        replay.proc.kill()  # SIGKILL, while it replays
        code, first, _ = await asyncio.to_thread(replay.wait)
        assert code == -signal.SIGKILL
        assert 15 <= len(steps(first, "replayed")) < 50

        code, second, err = await run_replay(dlq_env, dlq)

        assert code == 0, err
        assert group_of(second) == group_of(first)
        assert second[-1].endswith("the end of the topic was reached")
        await asyncio.to_thread(wait_until, lambda: len(handled(out)) >= 50, 60, "50 handled")
        code, third, err = await run_replay(dlq_env, dlq)
        assert code == 0, err
        assert third[1:] == [
            "replayed 0, already replayed 0, skipped 0, filtered out 0; "
            "the end of the topic was reached"
        ]
        assert app.stop(signal.SIGTERM) == 0
    seen = handled(out)
    assert Counter(value for value, _ in seen) == Counter(values)  # each handled exactly once
    assert len({origin for _, origin in seen}) == 50
    assert all(origin.startswith(f"{dlq}/") for _, origin in seen)
    replayed, already = steps(first + second, "replayed"), steps(first + second, "already")
    assert len(replayed) + len(already) == 50
    # The original topic holds the 50 originals and one replayed record of each.
    assert len(await records(bootstrap, topic)) == 100


async def replay_killed_after(env: dict[str, str], dlq: str, count: int) -> tuple[int, list[str]]:
    """Run a replay, SIGKILL it once it has replayed `count` (unless it ended first); its exit
    code and stdout lines."""
    replay = Replay(env, dlq)

    def enough() -> bool:
        return len(steps(replay.lines, "replayed")) >= count or replay.proc.poll() is not None

    await asyncio.to_thread(wait_until, enough, 60, f"{count} replayed")
    replay.proc.kill()
    code, lines, _ = await asyncio.to_thread(replay.wait)
    return code, lines


async def test_a_replay_killed_again_and_again_at_full_speed_publishes_each_dead_letter_once(
    dlq_env: dict[str, str], bootstrap: str, topic: str, producer: AIOKafkaProducer
) -> None:
    dlq = dlq_env["DEAD_LETTERS_DLQ"]
    await create_topic(bootstrap, dlq, 2)
    with dead_lettering(dlq_env, dlq, 40):
        await publish(producer, topic, [f"reject {n}" for n in range(40)])
    lines: list[str] = []
    for _ in range(30):
        code, out = await replay_killed_after(dlq_env, dlq, 4)  # no --rate: killed anywhere
        lines += out
        if code == 0:
            break
        assert code == -signal.SIGKILL
    else:
        raise AssertionError("the replay never finished")

    code, out, err = await run_replay(dlq_env, dlq)

    assert code == 0, err
    assert out[-1].startswith("replayed 0, already replayed 0,")
    origins = Counter(
        r[3]["taskflow-replayed-from"]
        for r in await records(bootstrap, topic)
        if "taskflow-replayed-from" in r[3]
    )
    assert len(origins) == 40
    assert set(origins.values()) == {1}  # none twice


async def test_a_dead_letter_published_but_not_committed_is_found_and_not_published_again(
    dlq_env: dict[str, str], bootstrap: str, topic: str, producer: AIOKafkaProducer
) -> None:
    dlq = dlq_env["DEAD_LETTERS_DLQ"]
    await create_topic(bootstrap, dlq, 2)
    with dead_lettering(dlq_env, dlq, 6):
        await publish(producer, topic, [f"reject {n}" for n in range(6)])
    code, lines, err = await run_replay(dlq_env, dlq)
    assert code == 0, err
    last = steps(lines, "replayed")[-1]
    # The state a crash between the publish and its commit leaves: the last dead letter
    # replayed is at its partition's committed offset again.
    where = last.split(" ")[1]  # <dlq>[<partition>]@<offset>
    partition, offset = int(where.split("[")[1].split("]")[0]), int(where.split("@")[1])
    group = group_of(lines)
    rewind = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await rewind.start()
    try:
        rewind.assign([TopicPartition(dlq, partition)])
        await rewind.commit({TopicPartition(dlq, partition): offset})
    finally:
        await rewind.stop()
    before = len(await records(bootstrap, topic))

    code, again, err = await run_replay(dlq_env, dlq)

    assert code == 0, err
    assert again[1].startswith(f"already replayed {where} to {topic}[")
    assert again[-1].startswith("replayed 0, already replayed 1,")
    assert len(await records(bootstrap, topic)) == before
    assert (await committed_offsets(bootstrap, group, dlq, 2))[partition] == offset + 1


async def test_a_dry_run_lists_what_would_be_replayed_and_publishes_and_commits_nothing(
    dlq_env: dict[str, str], bootstrap: str, topic: str, producer: AIOKafkaProducer
) -> None:
    dlq = dlq_env["DEAD_LETTERS_DLQ"]
    await create_topic(bootstrap, dlq, 2)
    with dead_lettering(dlq_env, dlq, 4):
        await publish(producer, topic, ["reject 0", "fail 1", "reject 2", "fail 3"])
    before = await records(bootstrap, topic)

    code, lines, err = await run_replay(dlq_env, dlq, "--dry-run")

    assert code == 0, err
    assert lines[0].startswith(f"dry run of {dlq}: nothing is published or committed; group ")
    # The default group is named after the filters as typed, and the first line says so.
    assert lines[0].endswith(" (a different filter spelling starts a new replay)")
    assert len(steps(lines, "would replay")) == 4
    assert lines[-1] == (
        "would replay 4, already replayed 0, skipped 0, filtered out 0; "
        "the end of the topic was reached"
    )
    assert await records(bootstrap, topic) == before
    assert await committed_offsets(bootstrap, group_of(lines), dlq, 2) == {0: None, 1: None}
    # Another app, on the same broker, sees the same dead letters.
    code, other, err = await run_replay(dlq_env, dlq, "--dry-run", app="tests.apps.idle:app")
    assert code == 0, err
    assert other == lines

    code, named, err = await run_replay(dlq_env, dlq, "--dry-run", "--group", "by-hand")
    assert code == 0, err
    assert named[0] == f"dry run of {dlq}: nothing is published or committed; group by-hand"

    code, lines, err = await run_replay(dlq_env, dlq)  # the dry run took nothing away

    assert code == 0, err
    assert lines[0] == (
        f"replaying {dlq} with group {group_of(lines)} (the same command resumes; a different "
        "filter spelling starts a new replay)"
    )
    assert len(steps(lines, "replayed")) == 4


async def test_filters_select_what_they_say_and_unreplayable_dead_letters_are_skipped(
    dlq_env: dict[str, str], bootstrap: str, topic: str, producer: AIOKafkaProducer
) -> None:
    dlq = dlq_env["DEAD_LETTERS_DLQ"]
    await create_topic(bootstrap, dlq, 1)
    values = ["reject 0", "fail 1", "reject 2", "fail 3", "reject 4"]
    with dead_lettering(dlq_env, dlq, 5):
        await publish(producer, topic, values)
    written = datetime.now(UTC)
    letters = await records(bootstrap, dlq)
    assert {letter[3]["content-type"] for letter in letters} == {b"text/plain"}
    # One whose value was left out (too large to dead-letter whole), and one not from taskflow.
    omitted = {**letters[0][3], "taskflow-value-omitted": b"the whole dead letter is too large"}
    await producer.send_and_wait(dlq, b"", key=b"big", headers=list(omitted.items()))
    await producer.send_and_wait(dlq, b"written by hand")

    async def would(*args: str) -> list[str]:
        code, lines, err = await run_replay(dlq_env, dlq, "--dry-run", *args)
        assert code == 0, err
        return steps(lines, "would replay")

    assert len(await would("--reason", "rejected")) == 3
    assert len(await would("--reason", "exhausted")) == 2
    assert len(await would("--error", "ValueError")) == 2
    assert len(await would("--error", "taskflow.exceptions.Reject")) == 3
    assert len(await would("--error", "KeyError")) == 0
    assert len(await would("--since", "1h")) == 5
    # A filter that matches nothing says what there was instead, on stderr; still exit code 0.
    code, lines, err = await run_replay(dlq_env, dlq, "--dry-run", "--error", "NoSuchError")
    assert (code, err) == (
        0,
        "nothing matched --error NoSuchError; the 6 dead letter(s) filtered out were by "
        "exception taskflow.exceptions.Reject 4, builtins.ValueError 2",
    )
    assert lines[-1].startswith("would replay 0, already replayed 0, skipped 1 ")
    code, lines, err = await run_replay(
        dlq_env, dlq, "--dry-run", "--reason", "exhausted", "--error", "Reject"
    )
    assert (code, err) == (
        0,
        "nothing matched --reason exhausted --error Reject; the 6 dead letter(s) filtered out "
        "were by reason rejected 4, exhausted 2; by exception taskflow.exceptions.Reject 4, "
        "builtins.ValueError 2",
    )
    code, lines, err = await run_replay(dlq_env, dlq, "--dry-run", "--error", "ValueError")
    assert (code, err) == (0, "")  # something matched: no hint
    later = written.isoformat()  # after the five dead letters: only the last two are later
    code, lines, err = await run_replay(
        dlq_env, dlq, "--dry-run", "--error", "ValueError", "--since", later
    )
    assert (code, err) == (
        0,
        f"nothing matched --error ValueError --since {later}; the 6 dead letter(s) filtered out "
        "were by exception taskflow.exceptions.Reject 4, builtins.ValueError 2",
    )
    assert len(await would("--since", later)) == 0
    assert len(await would("--since", (written - timedelta(hours=1)).isoformat())) == 5
    assert len(await would("--limit", "2")) == 2

    code, lines, err = await run_replay(dlq_env, dlq, "--reason", "rejected", "--limit", "2")

    assert code == 0, err
    assert lines[-1].startswith("replayed 2, already replayed 0, skipped 0, filtered out ")
    assert lines[-1].endswith("; the limit was reached: the same command goes on")

    code, rest, err = await run_replay(dlq_env, dlq, "--reason", "rejected", "--limit", "2")

    assert code == 0, err
    assert group_of(rest) == group_of(lines)
    skips = [line for line in rest if line.startswith("skipped ")]
    assert skips == [
        f"skipped {dlq}[0]@5: its value was left out (the whole dead letter is too large); "
        f"the original is at {letters[0][3]['taskflow-original-topic'].decode()}"
        f"[{letters[0][3]['taskflow-original-partition'].decode()}]"
        f"@{letters[0][3]['taskflow-original-offset'].decode()}",
        f"skipped {dlq}[0]@6: it has no taskflow headers, so where it came from is unknown",
    ]
    assert rest[-1].startswith(
        "replayed 1, already replayed 0, skipped 2 (value left out 1, no taskflow headers 1), "
        "filtered out "
    )
    assert rest[-1].endswith("; the end of the topic was reached")
    filtered = [int(line.split("filtered out ")[1].split(";")[0]) for line in (lines[-1], rest[-1])]
    assert sum(filtered) == 2  # the two exhausted ones
    replayed = [r for r in await records(bootstrap, topic) if "taskflow-replayed-from" in r[3]]
    assert sorted(r[2] for r in replayed) == [b"reject 0", b"reject 2", b"reject 4"]
    ours = ("taskflow-replayed-from", "taskflow-replay-group")
    for partition, key, value, headers in replayed:
        number = int((value or b"").split()[1])
        assert (partition, key) == (number % 4, f"k{number}".encode())
        assert headers["trace"] == f"t{number}".encode()  # the original's own headers
        assert headers["content-type"] == b"text/plain"
        assert headers["taskflow-replay-group"] == group_of(lines).encode()
        assert [name for name in headers if name.startswith("taskflow-")] == list(ours)


async def test_ctrl_c_stops_a_replay_cleanly_and_the_same_command_resumes(
    dlq_env: dict[str, str], bootstrap: str, topic: str, producer: AIOKafkaProducer
) -> None:
    dlq = dlq_env["DEAD_LETTERS_DLQ"]
    await create_topic(bootstrap, dlq, 2)
    values = [f"reject {n}" for n in range(12)]
    with dead_lettering(dlq_env, dlq, 12):
        await publish(producer, topic, values)
    replay = Replay(dlq_env, dlq, "--rate", "5/s")
    await asyncio.to_thread(wait_until, lambda: replay.count("replayed ") >= 3, 60, "3 replayed")

    replay.proc.send_signal(signal.SIGINT)
    code, first, err = await asyncio.to_thread(replay.wait)

    assert code == 1, err
    assert "SIGINT: stopping after the dead letter in hand" in err
    assert "Traceback" not in err
    assert first[-1].endswith("; stopped: the same command resumes")
    done = len(steps(first, "replayed"))
    assert done < 12

    code, second, err = await run_replay(dlq_env, dlq)

    assert code == 0, err
    assert len(steps(second, "replayed")) == 12 - done
    replayed = [r for r in await records(bootstrap, topic) if "taskflow-replayed-from" in r[3]]
    assert sorted(r[2] for r in replayed) == sorted(v.encode() for v in values)


async def test_dlq_replay_of_a_topic_that_does_not_exist_is_a_usage_error(
    app_env: dict[str, str], unique: str
) -> None:
    code, lines, err = await run_replay(app_env, f"{unique}-nothing")

    assert (code, lines) == (2, [])
    assert err.splitlines() == [
        f"Error: topic '{unique}-nothing' does not exist on "
        f"{app_env['TASKFLOW_BROKER']}: check its name"
    ]


async def test_dlq_replay_of_an_unreachable_broker_is_one_error_and_exit_code_1() -> None:
    code, lines, err = await run_replay({"TASKFLOW_BROKER": "kafka://127.0.0.1:1"}, "orders.dlq")

    assert (code, lines) == (1, [])
    assert err.splitlines()[-1].startswith("Error: cannot reach Kafka at kafka://127.0.0.1:1")


async def test_a_replay_escapes_control_characters_in_a_dead_letters_headers(
    app_env: dict[str, str], bootstrap: str, topic: str, unique: str, producer: AIOKafkaProducer
) -> None:
    dlq = f"{unique}-dead"
    await create_topic(bootstrap, dlq, 1)
    headers = {
        "taskflow-original-topic": topic.encode(),
        "taskflow-original-partition": b"0",
        "taskflow-original-offset": b"3",
        "taskflow-reason": b"rejected",
        "taskflow-exception-type": b"myapp.Bad\x1b]0;owned\x07",
    }
    await producer.send_and_wait(dlq, b"{}", headers=list(headers.items()))
    omitted = {**headers, "taskflow-value-omitted": b"too large\nreplayed everything"}
    await producer.send_and_wait(dlq, b"", headers=list(omitted.items()))

    code, lines, err = await run_replay(app_env, dlq, "--dry-run", "--error", "NoSuchError")

    assert code == 0, err
    assert err == (
        "nothing matched --error NoSuchError; the 2 dead letter(s) filtered out were by "
        "exception myapp.Bad\\x1b]0;owned\\x07 2"
    )

    code, lines, err = await run_replay(app_env, dlq, "--dry-run")

    assert code == 0, err
    assert lines[1:3] == [
        f"would replay {dlq}[0]@0 to {topic}[0]  rejected  myapp.Bad\\x1b]0;owned\\x07",
        f"skipped {dlq}[0]@1: its value was left out (too large\\nreplayed everything); "
        f"the original is at {topic}[0]@3",
    ]
    assert not any("\x1b" in line for line in lines)


async def test_a_replay_refuses_a_group_the_apps_consumers_join(
    dlq_env: dict[str, str], bootstrap: str, topic: str, producer: AIOKafkaProducer
) -> None:
    # The replay commits a mark on each original partition in its group: in the app's own group
    # that would move the app's consumers past the records they have not handled yet.
    dlq, app_group = dlq_env["DEAD_LETTERS_DLQ"], dlq_env["DEAD_LETTERS_GROUP"]
    await create_topic(bootstrap, dlq, 1)
    for number in range(10):
        await producer.send_and_wait(topic, f"ok {number}".encode(), partition=0)
    handled = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=app_group, enable_auto_commit=False
    )
    await handled.start()
    try:
        handled.assign([TopicPartition(topic, 0)])
        await handled.commit({TopicPartition(topic, 0): 4})  # the app has handled 4 of 10
    finally:
        await handled.stop()
    headers = {
        "taskflow-original-topic": topic.encode(),
        "taskflow-original-partition": b"0",
        "taskflow-original-offset": b"2",
        "taskflow-consumer-group": app_group.encode(),
        "taskflow-reason": b"rejected",
    }
    await producer.send_and_wait(dlq, b"reject 2", headers=list(headers.items()))

    code, lines, err = await run_replay(dlq_env, dlq, "--group", app_group)

    assert (code, lines) == (2, [])
    assert err.splitlines() == [
        f"Error: --group {app_group} is the consumer group of the app's consumer handle, and a "
        "replay commits in its group (on the dead-letter topic, and on each partition it "
        "replays to), which would move that consumer past records: name a group of the "
        "replay's own, or leave --group out"
    ]
    assert len(await records(bootstrap, topic)) == 10
    assert (await committed_offsets(bootstrap, app_group, topic, 4))[0] == 4


async def test_a_dry_run_stopped_by_its_limit_does_not_say_the_same_command_goes_on(
    app_env: dict[str, str], bootstrap: str, topic: str, unique: str, producer: AIOKafkaProducer
) -> None:
    dlq = await rejected_by_hand(bootstrap, producer, f"{unique}-dead", topic, 3)

    for _ in range(2):  # a dry run commits nothing, so the next one lists the same
        code, lines, err = await run_replay(app_env, dlq, "--dry-run", "--limit", "2")

        assert code == 0, err
        assert [line.split(" to ")[0] for line in steps(lines, "would replay")] == [
            f"would replay {dlq}[0]@0",
            f"would replay {dlq}[0]@1",
        ]
        assert lines[-1] == (
            "would replay 2, already replayed 0, skipped 0, filtered out 0; the limit was "
            "reached (a dry run commits nothing: run again, it lists the same)"
        )


async def test_a_replay_of_a_retry_topic_skips_its_records_which_their_stage_delivers(
    app_env: dict[str, str], bootstrap: str, topic: str, unique: str, producer: AIOKafkaProducer
) -> None:
    # A retry topic's records look like dead letters (where they came from, what failed) but are
    # waiting for their retry stage: published back too, each would be handled twice.
    retry = f"{topic}.retry-1s"
    await create_topic(bootstrap, retry, 1)
    original = Message(topic, 0, 5, None, b'{"id": 10}', (), 1)
    headers = retry_headers(original, f"{unique}-group", ConnectionError("down"), 1, 2**40)
    await producer.send_and_wait(retry, original.value, headers=list(headers))

    code, lines, err = await run_replay(app_env, retry)

    assert code == 0, err
    assert lines[1:] == [
        f"skipped {retry}[0]@0: it has no taskflow-reason header, so it is not a dead letter "
        "(a retry topic's record, whose retry stage delivers it)",
        "replayed 0, already replayed 0, skipped 1 (not a dead letter 1), filtered out 0; "
        "the end of the topic was reached",
    ]
    assert await records(bootstrap, topic) == []


async def test_a_relative_since_cut_short_says_how_to_go_on_with_the_same_window(
    app_env: dict[str, str], bootstrap: str, topic: str, unique: str, producer: AIOKafkaProducer
) -> None:
    # `--since 1h` counts from each run's start: a later rerun of the same command would leave
    # out what aged out of the window meanwhile. The run says how to go on with its own window.
    dlq = await rejected_by_hand(bootstrap, producer, f"{unique}-dead", topic, 3)

    code, lines, err = await run_replay(app_env, dlq, "--since", "1h", "--limit", "1")

    assert code == 0, err
    assert len(steps(lines, "replayed")) == 1
    group = group_of(lines)
    (note,) = [line for line in err.splitlines() if line.startswith("note: ")]
    assert note.startswith(
        "note: --since 1h counts back from each run's start, so the same command run later "
        "leaves out the dead letters that have aged out of its window meanwhile; to go on with "
        f"this run's window: --group {group} --since "
    )
    moment = note.rsplit(" ", 1)[1]
    assert moment.endswith("Z")

    code, lines, err = await run_replay(app_env, dlq, "--group", group, "--since", moment)

    assert code == 0, err
    assert [line.split(" to ")[0] for line in steps(lines, "replayed")] == [
        f"replayed {dlq}[0]@1",
        f"replayed {dlq}[0]@2",
    ]
    assert "note: " not in err  # an absolute time does not move


async def test_a_dead_letter_too_large_to_publish_stops_the_replay_naming_it_and_the_fix(
    app_env: dict[str, str], bootstrap: str, topic: str, unique: str
) -> None:
    # Written by a producer allowed larger records than the replay's default max_request_size.
    dlq = f"{unique}-dead"
    await create_topic(bootstrap, dlq, 1)
    headers = rejected_headers(topic)
    large = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4_000_000)
    await large.start()
    try:
        await large.send_and_wait(dlq, b"x" * 1_100_000, headers=headers, partition=0)
        await large.send_and_wait(dlq, b"after", headers=headers, partition=0)
    finally:
        await large.stop()

    code, lines, err = await run_replay(app_env, dlq)

    assert code == 1
    assert f"Error: the dead letter {dlq}[0]@0 cannot be published back to {topic}[0]: " in err
    assert (
        "the replay stopped before it: raise max_request_size (TASKFLOW_KAFKA_MAX_REQUEST_SIZE, "
        "and the topic's max.message.bytes if the broker refused it), then run the same command "
        "again"
    ) in " ".join(err.split())
    assert "Traceback" not in err
    assert await records(bootstrap, topic) == []  # nothing published, nothing skipped

    bigger = {**app_env, "TASKFLOW_KAFKA_MAX_REQUEST_SIZE": "4000000"}
    code, lines, err = await run_replay(bigger, dlq)

    assert code == 0, err
    assert [line.split(" to ")[0] for line in steps(lines, "replayed")] == [
        f"replayed {dlq}[0]@0",
        f"replayed {dlq}[0]@1",
    ]
    assert [value for _, _, value, _ in await records(bootstrap, topic)] == [
        b"x" * 1_100_000,
        b"after",
    ]
