"""Idempotency on a real broker and a real Redis, with the app under test running as `taskflow run`.

The app (`tests.apps.idem_counter`) counts each message's id in a Redis hash; before that it
appends a "started" mark, and with the count a "finished" mark. The scenarios:

- SIGKILLed at 5 random moments and restarted each time, an idempotent app loses nothing, and
  counts a message twice only for a handler that was running at a kill: it had started and its
  done mark was not written. The same run without idempotency shows how many more were repeated.
- The same with the counter written through `Context.transaction`, which lands with the done mark:
  every counter ends at exactly 1.
- Two replicas of one group with slow handlers, racing for the same messages after rebalances
  (one joins; then the other stalls, is thrown out of the group with its handlers running, and
  comes back), never both run a message's handler to completion.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import signal
import time
from collections import Counter
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis

from tests._process import AppProcess
from tests._redis import REDIS_URL
from tests._tansu import committed_offsets

pytestmark = pytest.mark.redis

COUNTER = "tests.apps.idem_counter:app"
APP_CLIENT = "idem-counter"  # the Redis client name of every connection the app makes
PARTITIONS = 4
MESSAGES = 20_000
KILLS = 5
LEASE = 3.0  # short, so a message held by a killed app's claim is taken over soon after a restart


@pytest.fixture
def counter_env(app_env: dict[str, str], topic: str) -> dict[str, str]:
    """The counter app on the test's topic; each scenario adds its group and key prefix."""
    return {
        **app_env,
        "TASKFLOW_REDIS_URL": f"{REDIS_URL}?client_name={APP_CLIENT}",
        "IDEM_TOPIC": topic,
        "IDEM_LEASE": str(LEASE),
    }


async def produce_ids(producer: AIOKafkaProducer, topic: str, count: int) -> dict[int, int]:
    """Send values ``0..count-1`` (each its own id); return the high watermark per partition."""
    sent = [await producer.send(topic, str(number).encode()) for number in range(count)]
    marks = dict.fromkeys(range(PARTITIONS), 0)
    for meta in await asyncio.gather(*sent):
        marks[meta.partition] = max(marks[meta.partition], meta.offset + 1)
    return marks


async def until_counted(
    redis: Redis, prefix: str, at_least: int, *apps: AppProcess, timeout: float = 60.0
) -> None:
    """Wait until `at_least` ids have been counted, failing early if an app exits."""
    deadline = time.monotonic() + timeout
    counted = 0
    while (counted := await redis.hlen(f"{prefix}counts")) < at_least:
        for app in apps:
            assert app.proc.poll() is None, f"the app exited ({app.proc.returncode}):\n{app.log}"
        if time.monotonic() > deadline:
            logs = "\n".join(app.log[-3000:] for app in apps)
            raise AssertionError(f"{counted} ids counted after {timeout}s, not {at_least}:\n{logs}")
        await asyncio.sleep(0.02)


async def until_disconnected(redis: Redis, timeout: float = 10.0) -> None:
    """Wait until Redis has dropped every connection of a killed app.

    Redis runs what a client sent before it died and only then closes its connection, so once
    they are gone the marks and done keys are final for that run.
    """
    deadline = time.monotonic() + timeout
    while any(client.get("name") == APP_CLIENT for client in await redis.client_list()):
        if time.monotonic() > deadline:
            raise AssertionError(f"the killed app's Redis connections stayed after {timeout}s")
        await asyncio.sleep(0.02)


async def known_finished(redis: Redis, env: dict[str, str]) -> int:
    """How many messages the store knows finished for the scenario's group: its done marks
    with a business key, else the offsets its partition ledgers cover (a fresh topic starts at
    offset 0, so a base counts the records below it)."""
    group = env["IDEM_GROUP"]
    if env.get("IDEM_KEY", "value") == "value":
        return await done_marks(redis, group)
    total = 0
    for partition in range(PARTITIONS):
        ledger = await redis.hgetall(
            f"taskflow:{{{group}}}:offsets:{env['IDEM_TOPIC']}:{partition}"
        )
        total += max(int(ledger.pop(b"base", -1)), 0) + len(ledger)
    return total


async def done_marks(redis: Redis, group: str) -> int:
    """How many of `group`'s idempotency keys are done marks."""
    done = 0
    keys = [key async for key in redis.scan_iter(match=f"taskflow:{{{group}}}:idem:*", count=5000)]
    for start in range(0, len(keys), 5000):
        values = await redis.mget(keys[start : start + 5000])
        done += sum(1 for value in values if value is not None and value.startswith(b"done:"))
    return done


@dataclass(frozen=True, slots=True)
class CrashRun:
    """What a run killed `KILLS` times, then let finish, left behind."""

    counts: dict[int, int]  # id: times its handler incremented its counter
    cut: list[int]  # per kill: handlers that had started and not completed
    done: int  # done marks at the end (0 without idempotency)
    committed: dict[int, int | None]

    @property
    def repeated(self) -> int:
        """Ids counted more than once."""
        return sum(1 for count in self.counts.values() if count > 1)

    @property
    def extra(self) -> int:
        """Counts beyond one per id."""
        return sum(self.counts.values()) - len(self.counts)


async def crash_run(
    redis: Redis, env: dict[str, str], bootstrap: str, topic: str, rng: random.Random
) -> CrashRun:
    """Run the counter app, SIGKILL it at `KILLS` random points of progress, then let it finish.

    A handler that had started and not completed at a kill is its started mark without a
    completion: with idempotency the completion is the message's done mark (the handler's counter
    and its done mark are what a re-run depends on), without it the finished mark written with
    the counter. Both totals only grow, so each kill's share is the growth since the one before.
    """
    prefix, group = env["IDEM_PREFIX"], env["IDEM_GROUP"]
    idempotent = env["IDEM_IDEMPOTENT"] == "1"
    points = sorted(rng.sample(range(MESSAGES // 10, MESSAGES * 9 // 10), KILLS))
    cut: list[int] = []
    unfinished = 0
    for point in points:
        with AppProcess(COUNTER, env=env) as app:
            await until_counted(redis, prefix, point, app)
            app.send(signal.SIGKILL)
            assert await asyncio.to_thread(app.wait, 30) == -signal.SIGKILL
        await until_disconnected(redis)
        assert await redis.hlen(f"{prefix}counts") < MESSAGES, "the kill did not come mid-stream"
        started = await redis.llen(f"{prefix}started")
        completed = (
            await known_finished(redis, env)
            if idempotent
            else await redis.llen(f"{prefix}finished")
        )
        cut.append(started - completed - unfinished)
        unfinished = started - completed
    with AppProcess(COUNTER, env=env) as app:
        await until_counted(redis, prefix, MESSAGES, app)
        app.send(signal.SIGTERM)
        assert await asyncio.to_thread(app.wait, 30) == 0
    counts = {int(ident): int(n) for ident, n in (await redis.hgetall(f"{prefix}counts")).items()}
    done = await known_finished(redis, env) if idempotent else 0
    committed = await committed_offsets(bootstrap, group, topic, PARTITIONS)
    return CrashRun(counts, cut, done, committed)


@pytest.mark.timeout(240)
async def test_sigkilled_five_times_repeats_only_handlers_running_at_the_kills(
    redis: Redis,
    counter_env: dict[str, str],
    unique: str,
    bootstrap: str,
    topic: str,
    producer: AIOKafkaProducer,
) -> None:
    watermarks = await produce_ids(producer, topic, MESSAGES)
    rng = random.Random()
    idem_env = {
        **counter_env,
        "IDEM_GROUP": f"{unique}-idem",
        "IDEM_PREFIX": "idem:",
        "IDEM_IDEMPOTENT": "1",
        "IDEM_KEY": "offset",
    }
    plain_env = {
        **counter_env,
        "IDEM_GROUP": f"{unique}-plain",
        "IDEM_PREFIX": "plain:",
        "IDEM_IDEMPOTENT": "0",
    }

    idem = await crash_run(redis, idem_env, bootstrap, topic, rng)
    plain = await crash_run(redis, plain_env, bootstrap, topic, rng)

    everything = set(range(MESSAGES))
    assert set(idem.counts) == everything, "a message was lost"
    assert set(plain.counts) == everything, "a message was lost"
    assert idem.done == MESSAGES
    assert idem.committed == watermarks
    assert plain.committed == watermarks
    # A counter goes past 1 only when a handler counted and was killed before its done mark.
    assert idem.repeated <= idem.extra <= sum(idem.cut)
    print(
        f"\nSIGKILL x{KILLS}, {MESSAGES} messages: idempotent {idem.repeated} id(s) counted twice "
        f"(handlers cut by the kills {idem.cut}); without idempotency {plain.repeated} id(s) "
        f"counted more than once, {plain.extra} extra runs (handlers cut {plain.cut})"
    )


@pytest.mark.timeout(240)
@pytest.mark.parametrize("key", ["offset", "value"])
async def test_sigkilled_five_times_effects_written_with_the_done_mark_happen_exactly_once(
    key: str,
    redis: Redis,
    counter_env: dict[str, str],
    unique: str,
    bootstrap: str,
    topic: str,
    producer: AIOKafkaProducer,
) -> None:
    watermarks = await produce_ids(producer, topic, MESSAGES)
    env = {
        **counter_env,
        "IDEM_GROUP": f"{unique}-once",
        "IDEM_PREFIX": "once:",
        "IDEM_IDEMPOTENT": "1",
        "IDEM_TRANSACTION": "1",
        "IDEM_KEY": key,
    }

    run = await crash_run(redis, env, bootstrap, topic, random.Random())

    assert set(run.counts) == set(range(MESSAGES)), "a message was lost"
    assert set(run.counts.values()) == {1}, f"{run.repeated} id(s) counted more than once"
    assert run.done == MESSAGES
    assert run.committed == watermarks
    assert await redis.llen("once:finished") == MESSAGES  # the other effect, exactly once too
    print(
        f"\nSIGKILL x{KILLS}, {MESSAGES} messages, key {key}, effects in ctx.transaction: every "
        f"id counted exactly once (handlers cut by the kills {run.cut})"
    )


RACE_MESSAGES = 64
DEFERRED = {
    "value": r"deferred \(claimed by another worker",
    "offset": r"deferred \(\S+\[(\d)\] is held by another consumer",
}
RACE_LEASE = 24.0  # renewed every 8 s: outlasts the stall, so the stalled replica keeps its claims


def marks_of(raw: list[bytes]) -> list[tuple[int, int]]:
    """``(pid, id)`` of each ``<pid> <id>`` mark."""
    pairs = [item.decode().split(" ") for item in raw]
    return [(int(pid), int(ident)) for pid, ident in pairs]


async def until_started(redis: Redis, prefix: str, at_least: int, timeout: float = 30.0) -> None:
    """Wait until `at_least` handlers have started."""
    deadline = time.monotonic() + timeout
    while (started := await redis.llen(f"{prefix}started")) < at_least:
        if time.monotonic() > deadline:
            raise AssertionError(f"{started} handlers started after {timeout}s, not {at_least}")
        await asyncio.sleep(0.02)


async def until_running(
    redis: Redis, prefix: str, pid: int, at_least: int, timeout: float = 30.0
) -> None:
    """Wait until `at_least` handlers of process `pid` have started and not finished."""
    deadline = time.monotonic() + timeout
    while True:
        started = marks_of(await redis.lrange(f"{prefix}started", 0, -1))
        finished = marks_of(await redis.lrange(f"{prefix}finished", 0, -1))
        running = Counter(m for m in started if m[0] == pid) - Counter(finished)
        if sum(running.values()) >= at_least:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not {at_least} handlers of {pid} running after {timeout}s")
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("key", ["offset", "value"])
async def test_two_replicas_racing_after_rebalances_never_both_complete_a_message(
    key: str,
    redis: Redis,
    counter_env: dict[str, str],
    unique: str,
    bootstrap: str,
    topic: str,
    producer: AIOKafkaProducer,
) -> None:
    # Slow handlers, many at once, so every rebalance finds some running. A replica joining or
    # leaving cleanly hands nothing over in flight (the revoke lets running handlers finish and
    # commits them first), so after a join the first replica stalls (SIGSTOP) with handlers
    # running until the group throws it out and the other one is given its messages; then it
    # wakes up, finishes them and rejoins.
    env = {
        **counter_env,
        "IDEM_GROUP": f"{unique}-race",
        "IDEM_PREFIX": "race:",
        "IDEM_IDEMPOTENT": "1",
        "IDEM_LEASE": str(RACE_LEASE),
        "IDEM_ORDERING": "key",
        "IDEM_CONCURRENCY": "4",
        "IDEM_MIN_DELAY_MS": "1000",
        "IDEM_DELAY_MS": "3000",
        "IDEM_KEY": key,
    }
    watermarks = await produce_ids(producer, topic, RACE_MESSAGES)
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(AppProcess(COUNTER, env=env))
        await asyncio.to_thread(first.wait_for, r"assigned \S+\[\d\]", 30)
        await until_started(redis, "race:", 8)
        second = stack.enter_context(AppProcess(COUNTER, env=env))
        await asyncio.to_thread(second.wait_for, r"assigned \S+\[\d\]", 30)
        # Its revoke let the first replica's handlers finish: these run since the join.
        await until_running(redis, "race:", first.pid, 4)
        first.send(signal.SIGSTOP)
        try:
            # The group throws the stalled replica out and gives the other one its partitions,
            # whose messages it finds claimed. Wake the stalled one before its claims run out.
            await asyncio.to_thread(second.wait_for, DEFERRED[key], RACE_LEASE * 2 / 3 - 2)
        finally:
            first.send(signal.SIGCONT)
        await until_counted(redis, "race:", RACE_MESSAGES, first, second)
        for replica in (first, second):
            replica.send(signal.SIGTERM)
        codes = [await asyncio.to_thread(replica.wait, 30) for replica in (first, second)]

    assert codes == [0, 0]
    started = marks_of(await redis.lrange("race:started", 0, -1))
    finished = marks_of(await redis.lrange("race:finished", 0, -1))
    completions = Counter(ident for _, ident in finished)
    assert set(completions) == set(range(RACE_MESSAGES)), "a message was lost"
    assert [ident for ident, n in completions.items() if n > 1] == [], "a message ran twice"
    assert await committed_offsets(bootstrap, env["IDEM_GROUP"], topic, PARTITIONS) == watermarks
    by_pid = Counter(pid for pid, _ in finished)
    assert by_pid[first.pid] > 0
    assert by_pid[second.pid] > 0
    if key == "value":  # the deferred messages name their keys: some were the stalled one's
        raced = {int(i) for i in re.findall(DEFERRED[key] + r" \(\S+:(\d+)\)\)", second.log)}
        assert {ident for pid, ident in finished if pid == first.pid} & raced, "no race"
    else:  # a partition the stalled replica held was deferred, and it then finished some of it
        raced = {int(p) for p in re.findall(DEFERRED[key], second.log)}
    found = "message(s)" if key == "value" else "partition(s)"
    print(
        f"\nrace, key {key}: {len(raced)} {found} found held by the stalled replica; "
        f"{len(started)} handler(s) started for {RACE_MESSAGES} messages; completed per replica "
        f"{[by_pid[first.pid], by_pid[second.pid]]}"
    )
