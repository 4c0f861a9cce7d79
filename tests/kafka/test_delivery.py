"""Delivery guarantees on a real broker, with the app under test running as `taskflow run`.

Every scenario produces keyed messages to a fresh 4-partition topic while one or more recorder
children consume them, stops or kills a child mid-stream, and then compares what the output file
says was handled with what the producer was told it wrote, and with what the group committed:

- a graceful stop (SIGTERM) loses nothing and hands nothing over twice;
- a crash (SIGKILL) loses nothing, and redelivers only what was at or above the committed offset;
- replicas joining and leaving a group lose nothing;
- key ordering keeps each key in offset order while keys overlap;
- a handler busy at SIGTERM finishes, and its message is committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

from tests._process import AppProcess, count_lines, wait_until
from tests._tansu import committed_offsets

RECORDER = "tests.apps.recorder:app"
PARTITIONS = 4
STREAM = 10_000
KEYS = 1000

Position = tuple[int, int]  # (partition, offset)


@dataclass(frozen=True, slots=True)
class Handled:
    """One line of the recorder's output file."""

    pid: int
    partition: int
    offset: int
    key: str

    @property
    def position(self) -> Position:
        return self.partition, self.offset


def read_handled(path: Path) -> list[Handled]:
    """The output file's lines, in the order the handlers finished."""
    if not path.exists():
        return []
    handled = []
    for line in path.read_text().splitlines():
        pid, _topic, partition, offset, key, _value = line.split(" ", 5)
        handled.append(Handled(int(pid), int(partition), int(offset), key))
    return handled


def positions(handled: Iterable[Handled]) -> set[Position]:
    return {h.position for h in handled}


def duplicates(handled: list[Handled]) -> dict[Position, int]:
    """Positions handled more than once, with how many times."""
    counts = Counter(h.position for h in handled)
    return {position: n for position, n in counts.items() if n > 1}


def high_watermarks(produced: Iterable[Position]) -> dict[int, int | None]:
    """What a group that finished everything has committed: one past the last offset."""
    marks: dict[int, int | None] = dict.fromkeys(range(PARTITIONS))
    for partition, offset in produced:
        marks[partition] = max(marks[partition] or 0, offset + 1)
    return marks


def unsettled_partitions(log: str) -> set[int]:
    """Partitions whose finished work a worker says it could not commit or had to cancel."""
    found = set()
    for line in log.splitlines():
        if (failed := re.search(r"commit of (.*) failed", line)) is not None:
            found |= {int(p) for p in re.findall(r"\[(\d+)\]@", failed.group(1))}
        elif (cancelled := re.search(r"cancelled handler \S+ for \S+\[(\d+)\]@", line)) is not None:
            found.add(int(cancelled.group(1)))
    return found


def unhandled_below(committed: dict[int, int | None], handled: list[Handled]) -> list[Position]:
    """Offsets below the committed one of their partition that were never handled."""
    done = positions(handled)
    return [
        (partition, offset)
        for partition, mark in committed.items()
        for offset in range(mark or 0)
        if (partition, offset) not in done
    ]


async def produce(
    producer: AIOKafkaProducer, topic: str, count: int, *, chunk: int = 250, pause: float = 0.1
) -> list[Position]:
    """Send `count` keyed messages in paced chunks; return where each one was written."""
    sent = []
    for start in range(0, count, chunk):
        for number in range(start, min(start + chunk, count)):
            key = f"k{number % KEYS}".encode()
            sent.append(await producer.send(topic, str(number).encode(), key=key))
        await asyncio.sleep(pause)
    written = await asyncio.gather(*sent)
    return [(meta.partition, meta.offset) for meta in written]


@contextlib.asynccontextmanager
async def background(
    work: Coroutine[Any, Any, list[Position]],
) -> AsyncIterator[asyncio.Task[list[Position]]]:
    """Run `work` while the block runs; cancel it if the block fails."""
    task = asyncio.create_task(work)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """`wait_until` in a thread, so the test's producer keeps running meanwhile."""
    await asyncio.to_thread(wait_until, predicate, timeout, what)


async def exit_code(app: AppProcess, sig: signal.Signals, timeout: float = 30.0) -> int:
    app.send(sig)
    return await asyncio.to_thread(app.wait, timeout)


async def wait_assigned(*apps: AppProcess, timeout: float = 30.0) -> None:
    for app in apps:
        await asyncio.to_thread(app.wait_for, r"assigned \S+\[\d\]", timeout)


def all_handled(out: Path, expected: set[Position]) -> Callable[[], bool]:
    return lambda: count_lines(out) >= len(expected) and positions(read_handled(out)) >= expected


async def wait_committed(
    bootstrap: str, group: str, topic: str, at_least: int, timeout: float = 60.0
) -> None:
    """Wait until the group has committed `at_least` offsets over all partitions."""
    total = 0
    try:
        async with asyncio.timeout(timeout):
            while total < at_least:
                await asyncio.sleep(0.1)
                committed = await committed_offsets(bootstrap, group, topic, PARTITIONS)
                total = sum(mark or 0 for mark in committed.values())
    except TimeoutError:
        raise AssertionError(
            f"{total} offsets committed after {timeout}s, not {at_least}"
        ) from None


@dataclass(frozen=True, slots=True)
class Interrupted:
    """What a run interrupted by a signal, then restarted until everything was handled, left."""

    exit_code: int  # of the interrupted run
    before: list[Handled]  # the output file once the interrupted run had exited
    committed_before: dict[int, int | None]  # the group's offsets at that moment
    produced: set[Position]
    handled: list[Handled]  # the output file at the end
    committed: dict[int, int | None]  # the group's offsets at the end


async def interrupt_and_restart(
    sig: signal.Signals, env: dict[str, str], bootstrap: str, topic: str, producer: AIOKafkaProducer
) -> Interrupted:
    """Stop a recorder with `sig` mid-stream, then run another until the stream is handled."""
    group, out = env["RECORDER_GROUP"], Path(env["RECORDER_OUT"])
    with AppProcess(RECORDER, env=env) as first:
        await wait_assigned(first)
        async with background(produce(producer, topic, STREAM)) as producing:
            await wait_committed(bootstrap, group, topic, at_least=1000)
            code = await exit_code(first, sig)
            before = read_handled(out)
            committed_before = await committed_offsets(bootstrap, group, topic, PARTITIONS)
            assert len(before) < STREAM, "the signal did not come mid-stream"
            with AppProcess(RECORDER, env=env) as second:
                produced = set(await producing)
                await until(all_handled(out, produced), 60, "every message handled")
                assert await exit_code(second, signal.SIGTERM) == 0
    handled = read_handled(out)
    assert {h.pid for h in handled} == {first.pid, second.pid}
    committed = await committed_offsets(bootstrap, group, topic, PARTITIONS)
    return Interrupted(code, before, committed_before, produced, handled, committed)


def assert_redelivered_only_uncommitted(run: Interrupted) -> dict[Position, int]:
    """At-least-once after a crash: nothing lost, nothing committed unhandled or handled again."""
    assert positions(run.handled) == run.produced
    assert run.committed == high_watermarks(run.produced)
    assert unhandled_below(run.committed_before, run.before) == []
    repeated = duplicates(run.handled)
    below = sorted(p for p in repeated if p[1] < (run.committed_before[p[0]] or 0))
    assert below == [], "messages below the committed offset were handled again"
    assert set(repeated.values()) <= {2}
    return repeated


async def test_sigterm_mid_stream_loses_nothing_and_repeats_nothing(
    env: dict[str, str], bootstrap: str, topic: str, producer: AIOKafkaProducer
) -> None:
    run = await interrupt_and_restart(signal.SIGTERM, env, bootstrap, topic, producer)

    assert run.exit_code == 0
    assert positions(run.handled) == run.produced
    assert duplicates(run.handled) == {}
    assert run.committed_before == high_watermarks(positions(run.before))
    assert run.committed == high_watermarks(run.produced)


async def test_sigkill_mid_stream_repeats_only_what_was_not_committed(
    env: dict[str, str], bootstrap: str, topic: str, producer: AIOKafkaProducer
) -> None:
    run = await interrupt_and_restart(signal.SIGKILL, env, bootstrap, topic, producer)

    assert run.exit_code == -signal.SIGKILL
    repeated = assert_redelivered_only_uncommitted(run)
    print(f"\nSIGKILL: {len(repeated)} duplicate(s); committed at the kill {run.committed_before}")


async def test_replicas_leaving_and_joining_lose_nothing(
    env: dict[str, str], bootstrap: str, topic: str, producer: AIOKafkaProducer, out: Path
) -> None:
    group = env["RECORDER_GROUP"]
    with contextlib.ExitStack() as stack:
        replicas = [stack.enter_context(AppProcess(RECORDER, env=env)) for _ in range(3)]
        everyone = list(replicas)
        await wait_assigned(*replicas)
        async with background(produce(producer, topic, STREAM)) as producing:
            await wait_committed(bootstrap, group, topic, at_least=1000)
            leaving = replicas.pop(0)
            assert await exit_code(leaving, signal.SIGTERM) == 0
            joining = stack.enter_context(AppProcess(RECORDER, env=env))
            replicas.append(joining)
            everyone.append(joining)
            await wait_assigned(joining)
            produced = set(await producing)
            await until(all_handled(out, produced), 60, "every message handled")
        for replica in replicas:
            replica.send(signal.SIGTERM)
        codes = [await asyncio.to_thread(replica.wait, 30) for replica in replicas]

    assert codes == [0, 0, 0]
    handled = read_handled(out)
    assert positions(handled) == produced
    assert await committed_offsets(bootstrap, group, topic, PARTITIONS) == high_watermarks(produced)
    by_pid = Counter(h.pid for h in handled)
    assert by_pid[leaving.pid] > 0
    assert by_pid[joining.pid] > 0, "the replica added mid-stream handled nothing"
    repeated = duplicates(handled)
    pids_of: dict[Position, list[int]] = defaultdict(list)
    for h in handled:
        if h.position in repeated:
            pids_of[h.position].append(h.pid)
    same_replica = {p: pids for p, pids in pids_of.items() if len(set(pids)) < len(pids)}
    assert same_replica == {}, "a replica handled a message twice"
    # Partition ordering finishes what runs and commits it before a partition moves: work moves
    # uncommitted only when that commit failed, or a handler had to be cancelled.
    unsettled = set().union(*(unsettled_partitions(replica.log) for replica in everyone))
    assert {partition for partition, _ in repeated} <= unsettled
    print(
        f"\nreplicas: {len(repeated)} duplicate(s) after rebalances; "
        f"handled per replica {[by_pid[r.pid] for r in everyone]} (the last joined mid-stream)"
    )


async def test_key_ordering_keeps_each_key_in_order_across_a_crash(
    env: dict[str, str], bootstrap: str, topic: str, producer: AIOKafkaProducer
) -> None:
    env = {**env, "RECORDER_ORDERING": "key", "RECORDER_CONCURRENCY": "16"}
    # Mostly quick handlers, and now and then one that stays busy while later offsets finish.
    env |= {"RECORDER_DELAY_MS": "10", "RECORDER_SLOW_EVERY": "300", "RECORDER_SLOW_MS": "1500"}
    run = await interrupt_and_restart(signal.SIGKILL, env, bootstrap, topic, producer)

    assert run.exit_code == -signal.SIGKILL
    repeated = assert_redelivered_only_uncommitted(run)
    per_key: dict[tuple[int, str], list[int]] = defaultdict(list)
    per_partition: dict[tuple[int, int], list[int]] = defaultdict(list)
    for h in run.handled:
        per_key[h.pid, h.key].append(h.offset)
        per_partition[h.pid, h.partition].append(h.offset)
    out_of_order = {key: offsets for key, offsets in per_key.items() if offsets != sorted(offsets)}
    assert out_of_order == {}
    overlapped = [tp for tp, offsets in per_partition.items() if offsets != sorted(offsets)]
    assert overlapped, "no partition ever finished its records out of offset order"
    print(f"\nkey ordering: {len(repeated)} duplicate(s) after SIGKILL")


async def test_handler_busy_at_sigterm_finishes_and_is_committed(
    env: dict[str, str],
    bootstrap: str,
    topic: str,
    producer: AIOKafkaProducer,
    out: Path,
    tmp_path: Path,
) -> None:
    group, started = env["RECORDER_GROUP"], tmp_path / "started.txt"
    slow = {**env, "RECORDER_DELAY_MS": "3000", "RECORDER_MIN_DELAY_MS": "3000"}
    slow["RECORDER_STARTED"] = str(started)
    for number in range(3):  # the first is busy at the signal, the others wait behind it
        await producer.send_and_wait(topic, str(number).encode(), key=b"k", partition=0)
    with AppProcess(RECORDER, env=slow) as first:
        await until(lambda: count_lines(started) == 1, 30, "the slow handler to start")
        assert count_lines(out) == 0
        assert await exit_code(first, signal.SIGTERM) == 0
    assert "stopped cleanly" in first.log
    assert [h.position for h in read_handled(out)] == [(0, 0)]
    committed = await committed_offsets(bootstrap, group, topic, PARTITIONS)
    assert committed == {0: 1, 1: None, 2: None, 3: None}

    with AppProcess(RECORDER, env=env) as second:
        await until(lambda: count_lines(out) == 3, 30, "the waiting messages handled")
        assert await exit_code(second, signal.SIGTERM) == 0
    handled = [(h.pid, h.position) for h in read_handled(out)]
    assert handled == [(first.pid, (0, 0)), (second.pid, (0, 1)), (second.pid, (0, 2))]
    committed = await committed_offsets(bootstrap, group, topic, PARTITIONS)
    assert committed == {0: 3, 1: None, 2: None, 3: None}
