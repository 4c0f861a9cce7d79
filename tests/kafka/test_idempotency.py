"""Idempotency on a real broker and a real Redis, with the app under test running as `taskflow run`.

The app (`tests.apps.idem_counter`) counts each message's id in a Redis hash; before that it
appends a "started" mark, and with the count a "finished" mark. The scenarios:

- SIGKILLed at 5 random moments and restarted each time, an idempotent app loses nothing, and
  counts a message twice only for a handler that was running at a kill: it had started and its
  done mark was not written. The same run without idempotency shows how many more were repeated.
- The same with the counter written through `Context.transaction`, which lands with the done mark:
  every counter ends at exactly 1.
- Both again with the app on a 3-primary Redis Cluster and behind Sentinel.
- The primary behind Sentinel SIGKILLed mid-stream: the app goes on by itself once Sentinel has
  promoted the replica, nothing is lost, and what could run twice is measured.
- Two replicas of one group with slow handlers, racing for the same messages after rebalances
  (one joins; then the other stalls, is thrown out of the group with its handlers running, and
  comes back), never both run a message's handler to completion.

Only `completed` reads how taskflow keeps its claims; the rest reads the app's own marks and
Kafka's committed offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiokafka import AIOKafkaProducer
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster

from tests._process import AppProcess
from tests._redis import REDIS_URL
from tests._redis_deployments import RedisSentinel
from tests._tansu import committed_offsets

if TYPE_CHECKING:
    from taskflow.stores.connect import RedisClient

pytestmark = pytest.mark.redis

COUNTER = "tests.apps.idem_counter:app"
APP_CLIENT = "idem-counter"  # the Redis client name of the app's connections to the shared Redis
TEST_CLIENT = "taskflow-tests"  # the name of the tests' own connections to a private deployment
PARTITIONS = 4
LEASE = 3.0  # short, so a message held by a killed app's claim is taken over soon after a restart

# One read-only script counts a group's done marks in one step, so the count can be taken on a
# replica whose primary has just died, before Sentinel promotes it.
COMPLETED = """#!lua flags=no-writes
local done = 0
for _, key in ipairs(redis.call('KEYS', ARGV[1])) do
    local value = redis.call('GET', key)
    if value and string.sub(value, 1, 5) == 'done:' then
        done = done + 1
    end
end
return done
"""
# The same for messages known by their offset: the offsets each partition's ledger covers (the
# topics here start at offset 0, so a base counts the records below it).
COVERED = """#!lua flags=no-writes
local done = 0
for _, key in ipairs(redis.call('KEYS', ARGV[1])) do
    local base = tonumber(redis.call('HGET', key, 'base') or '-1')
    local fields = redis.call('HLEN', key)
    if base >= 0 then
        done = done + base + fields - 1
    else
        done = done + fields
    end
end
return done
"""


async def completed(redis: RedisClient, group: str, key: str = "value") -> int:
    """How many messages `group` has completed, by taskflow's own record: its done marks, or
    with `key` ``offset`` its partitions' ledgers.

    The one place that reads how the idempotency store keeps its claims. On a cluster every key
    of a group carries its hash tag ``{group}``, so they sit on one node, which the script is sent
    to.
    """
    kind, script = ("idem", COMPLETED) if key == "value" else ("offsets", COVERED)
    prefix = f"taskflow:{{{group}}}:{kind}:"
    return int(await redis.eval(script, 1, prefix, prefix + "*"))


@dataclass(frozen=True, slots=True)
class Deployment:
    """A Redis deployment under the counter app, as the crash runs see it.

    Attributes:
        kind: ``redis`` (the tests' database on the shared server), ``cluster`` or ``sentinel``.
        url: The app's ``TASKFLOW_REDIS_URL``.
        servers: A URL of every server the app talks to, where its connections are watched.
        app_names: The names the app's connections have there in CLIENT LIST: the one its URL
            gives them on the shared server; none on a private deployment (a cluster or Sentinel
            URL takes no options), where the tests name theirs and Sentinel names its own.
        messages: How many messages a crash run produces.
        kills: How many times a crash run SIGKILLs the app.
    """

    kind: str
    url: str
    servers: tuple[str, ...]
    app_names: frozenset[str]
    messages: int
    kills: int


# (messages, kills) per deployment. The shared Redis runs the full scenario. A cluster or Sentinel
# adds hops, not new ways for a kill to cut a handler off, so a smaller run keeps CI time in
# bounds without blunting it: 5,000 messages and 3 kills still land mid-stream, each cutting off
# a few handlers (printed), and each run asserts as strictly as the full one.
KILLS = {"redis": (20_000, 5), "cluster": (5_000, 3), "sentinel": (5_000, 3)}


@pytest.fixture
def deployment(request: pytest.FixtureRequest) -> Deployment:
    """The deployment named by the test's parameter, started if need be."""
    kind: str = request.param
    messages, kills = KILLS[kind]
    if kind == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        servers = tuple(f"redis://127.0.0.1:{port}" for port in cluster.ports)
        return Deployment(kind, cluster.url, servers, frozenset({""}), messages, kills)
    if kind == "sentinel":
        sentinel: RedisSentinel = request.getfixturevalue("redis_sentinel")
        servers = (
            f"redis://127.0.0.1:{sentinel.primary_port()}",
            f"redis://127.0.0.1:{sentinel.sentinel.port}",
        )
        return Deployment(kind, sentinel.url, servers, frozenset({""}), messages, kills)
    url = f"{REDIS_URL}?client_name={APP_CLIENT}"
    return Deployment(kind, url, (REDIS_URL,), frozenset({APP_CLIENT}), messages, kills)


@pytest.fixture
async def store(deployment: Deployment) -> AsyncIterator[RedisClient]:
    """The test's client of the deployment (the primary behind Sentinel), named `TEST_CLIENT`.

    On the shared server it is the tests' database, flushed first.
    """
    client: RedisClient
    if deployment.kind == "cluster":
        nodes = [ClusterNode("127.0.0.1", int(url.rsplit(":", 1)[1])) for url in deployment.servers]
        client = RedisCluster(startup_nodes=nodes, client_name=TEST_CLIENT)
    else:
        client = Redis.from_url(deployment.servers[0], client_name=TEST_CLIENT)
    try:
        if deployment.kind == "redis":
            await client.flushdb()
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def counter_env(app_env: dict[str, str], topic: str) -> dict[str, str]:
    """The counter app on the test's topic; each scenario adds its Redis, group and key prefix."""
    return {**app_env, "IDEM_TOPIC": topic, "IDEM_LEASE": str(LEASE)}


async def produce_ids(producer: AIOKafkaProducer, topic: str, count: int) -> dict[int, int]:
    """Send values ``0..count-1`` (each its own id); return the high watermark per partition."""
    sent = [await producer.send(topic, str(number).encode()) for number in range(count)]
    marks = dict.fromkeys(range(PARTITIONS), 0)
    for meta in await asyncio.gather(*sent):
        marks[meta.partition] = max(marks[meta.partition], meta.offset + 1)
    return marks


async def until_counted(
    redis: RedisClient, prefix: str, at_least: int, *apps: AppProcess, timeout: float = 60.0
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


async def until_disconnected(deployment: Deployment, timeout: float = 10.0) -> None:
    """Wait until every server the app talked to has dropped every connection of the killed app.

    Redis runs what a client sent before it died and only then closes its connection, so once
    they are gone the marks and done keys are final for that run. On a cluster each node holds
    connections of its own, and behind Sentinel the app talks to the Sentinel and the primary.
    """
    deadline = time.monotonic() + timeout
    for url in deployment.servers:
        async with Redis.from_url(url, client_name=TEST_CLIENT) as server:
            while any(
                client.get("name", "") in deployment.app_names
                for client in await server.client_list(_type="normal")
            ):
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"the killed app's connections to {url} stayed after {timeout}s"
                    )
                await asyncio.sleep(0.02)


@dataclass(frozen=True, slots=True)
class CrashRun:
    """What a run killed several times, then let finish, left behind."""

    counts: dict[int, int]  # id: times its handler incremented its counter
    cut: list[int]  # per kill: handlers that had started and not completed
    done: int  # messages completed by taskflow's record at the end (0 without idempotency)
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
    redis: RedisClient,
    deployment: Deployment,
    env: dict[str, str],
    bootstrap: str,
    topic: str,
    rng: random.Random,
) -> CrashRun:
    """Run the counter app, SIGKILL it at random points of progress, then let it finish.

    A handler that had started and not completed at a kill is its started mark without a
    completion: with idempotency the completion is the message's done mark (the handler's counter
    and its done mark are what a re-run depends on), without it the finished mark written with
    the counter. Both totals only grow, so each kill's share is the growth since the one before.
    """
    prefix, group = env["IDEM_PREFIX"], env["IDEM_GROUP"]
    idempotent = env["IDEM_IDEMPOTENT"] == "1"
    key = env.get("IDEM_KEY", "value")
    messages = deployment.messages
    env = {**env, "TASKFLOW_REDIS_URL": deployment.url}
    points = sorted(rng.sample(range(messages // 10, messages * 9 // 10), deployment.kills))
    cut: list[int] = []
    unfinished = 0
    for point in points:
        with AppProcess(COUNTER, env=env) as app:
            await until_counted(redis, prefix, point, app)
            app.send(signal.SIGKILL)
            assert await asyncio.to_thread(app.wait, 30) == -signal.SIGKILL
        await until_disconnected(deployment)
        assert await redis.hlen(f"{prefix}counts") < messages, "the kill did not come mid-stream"
        started = await redis.llen(f"{prefix}started")
        finished = (
            await completed(redis, group, key)
            if idempotent
            else await redis.llen(f"{prefix}finished")
        )
        cut.append(started - finished - unfinished)
        unfinished = started - finished
    with AppProcess(COUNTER, env=env) as app:
        await until_counted(redis, prefix, messages, app)
        app.send(signal.SIGTERM)
        assert await asyncio.to_thread(app.wait, 30) == 0
    counts = {int(ident): int(n) for ident, n in (await redis.hgetall(f"{prefix}counts")).items()}
    done = await completed(redis, group, key) if idempotent else 0
    committed = await committed_offsets(bootstrap, group, topic, PARTITIONS)
    return CrashRun(counts, cut, done, committed)


def scenario(counter_env: dict[str, str], group: str, tag: str, **env: str) -> dict[str, str]:
    """The counter app in `group`, its keys all under the hash tag `{tag}` (one cluster slot)."""
    return {**counter_env, "IDEM_GROUP": group, "IDEM_PREFIX": f"{{{tag}}}:", **env}


@pytest.mark.timeout(360)
@pytest.mark.parametrize("deployment", ["redis", "cluster", "sentinel"], indirect=True)
async def test_sigkilled_repeatedly_repeats_only_handlers_running_at_the_kills(
    deployment: Deployment,
    store: RedisClient,
    counter_env: dict[str, str],
    unique: str,
    bootstrap: str,
    topic: str,
    producer: AIOKafkaProducer,
) -> None:
    messages, kills = deployment.messages, deployment.kills
    watermarks = await produce_ids(producer, topic, messages)
    rng = random.Random()
    # The app's keys share a tag of their own: on a cluster, likely a node other than the claims'.
    idem_env = scenario(
        counter_env,
        f"{unique}-idem",
        f"{unique}-idem-counts",
        IDEM_IDEMPOTENT="1",
        IDEM_KEY="offset",
    )
    plain_env = scenario(
        counter_env, f"{unique}-plain", f"{unique}-plain-counts", IDEM_IDEMPOTENT="0"
    )

    idem = await crash_run(store, deployment, idem_env, bootstrap, topic, rng)
    plain = await crash_run(store, deployment, plain_env, bootstrap, topic, rng)

    everything = set(range(messages))
    assert set(idem.counts) == everything, "a message was lost"
    assert set(plain.counts) == everything, "a message was lost"
    assert idem.done == messages
    assert idem.committed == watermarks
    assert plain.committed == watermarks
    # A counter goes past 1 only when a handler counted and was killed before its done mark.
    assert idem.repeated <= idem.extra <= sum(idem.cut)
    print(
        f"\n{deployment.kind}: SIGKILL x{kills}, {messages} messages: idempotent "
        f"{idem.repeated} id(s) counted twice (handlers cut by the kills {idem.cut}); without "
        f"idempotency {plain.repeated} id(s) counted more than once, {plain.extra} extra runs "
        f"(handlers cut {plain.cut})"
    )


@pytest.mark.timeout(360)
@pytest.mark.parametrize(
    ("deployment", "key"),
    [("redis", "offset"), ("redis", "value"), ("cluster", "value"), ("sentinel", "offset")],
    indirect=["deployment"],
)
async def test_sigkilled_repeatedly_effects_written_with_the_done_mark_happen_exactly_once(
    deployment: Deployment,
    key: str,
    store: RedisClient,
    counter_env: dict[str, str],
    unique: str,
    bootstrap: str,
    topic: str,
    producer: AIOKafkaProducer,
) -> None:
    messages, kills = deployment.messages, deployment.kills
    watermarks = await produce_ids(producer, topic, messages)
    group = f"{unique}-once"
    # ctx.transaction's keys carry the claim's hash tag, the group's: a cluster requires it.
    env = scenario(
        counter_env, group, group, IDEM_IDEMPOTENT="1", IDEM_TRANSACTION="1", IDEM_KEY=key
    )

    run = await crash_run(store, deployment, env, bootstrap, topic, random.Random())

    assert set(run.counts) == set(range(messages)), "a message was lost"
    assert set(run.counts.values()) == {1}, f"{run.repeated} id(s) counted more than once"
    assert run.done == messages
    assert run.committed == watermarks
    assert await store.llen(f"{{{group}}}:finished") == messages  # the other effect, exactly once
    print(
        f"\n{deployment.kind}, key {key}: SIGKILL x{kills}, {messages} messages, effects in "
        f"ctx.transaction: every id counted exactly once (handlers cut by the kills {run.cut})"
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
        "TASKFLOW_REDIS_URL": f"{REDIS_URL}?client_name={APP_CLIENT}",
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


FAILOVER_MESSAGES = 10_000
WAIT = 60.0  # seconds: the bound of every wait in the failover test
# The app's lines about the store: done marks that could not be written (at once: handlers keep
# finishing on the claims of the batches they fetched) and then were; claims that could not be
# taken (once a batch taken before the kill is used up, if the failover lasts that long) and then
# could.
MARKS_FAILED = re.compile(r"WARNING .* on_event: writing \d+ done marks failed")
MARKS_WRITTEN = "on_event: the held-back done marks are written"
UNAVAILABLE = "on_event: the idempotency store is unavailable"
ANSWERS = "on_event: the idempotency store answers again"
LOST_ONE = re.compile(r"on_event: a message ran, but its claim \(\S+\) had been lost")
LOST_MANY = re.compile(r"on_event: (\d+) messages ran, but their claims had been lost")


@dataclass(frozen=True, slots=True)
class Marks:
    """The counter app's file of marks (``IDEM_OUT``) at one moment: what ran, and where."""

    started: Counter[int]  # id: handlers that started on it
    finished: Counter[int]  # id: handlers that returned
    pids: frozenset[int]

    @classmethod
    def read(cls, path: Path) -> Marks:
        started: Counter[int] = Counter()
        finished: Counter[int] = Counter()
        pids: set[int] = set()
        text = path.read_text() if path.exists() else ""
        for line in text.split("\n")[:-1]:  # whole lines only: the app may be writing the last
            what, pid, ident = line.split()
            (started if what == "started" else finished)[int(ident)] += 1
            pids.add(int(pid))
        return cls(started, finished, frozenset(pids))

    @property
    def running(self) -> int:
        """Ids whose handler had started and not returned."""
        return len(set(self.started) - set(self.finished))

    @property
    def repeated(self) -> int:
        """Ids whose handler returned more than once."""
        return sum(1 for count in self.finished.values() if count > 1)


async def until_finished(path: Path, at_least: int, app: AppProcess, timeout: float) -> Marks:
    """Wait until `at_least` ids have finished in `path`, failing early if the app exits."""
    deadline = time.monotonic() + timeout
    while len((marks := Marks.read(path)).finished) < at_least:
        assert app.proc.poll() is None, f"the app exited ({app.proc.returncode}):\n{app.log}"
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{len(marks.finished)} ids finished after {timeout}s, not {at_least}:\n"
                f"{app.log[-3000:]}"
            )
        await asyncio.sleep(0.05)  # polled: only the app's file says what it handled
    return marks


async def until_committed(
    bootstrap: str, group: str, topic: str, watermarks: dict[int, int]
) -> dict[int, int | None]:
    """Wait until `group` has committed every partition up to its high watermark."""
    deadline = time.monotonic() + WAIT
    while (committed := await committed_offsets(bootstrap, group, topic, PARTITIONS)) != watermarks:
        if time.monotonic() > deadline:
            return committed  # the caller's assertion shows how far it got
        await asyncio.sleep(0.2)  # polled: only the broker knows what the app committed
    return committed


def claims_lost(log: str) -> int:
    """Messages the app reports it ran under a claim that Redis no longer had."""
    return len(LOST_ONE.findall(log)) + sum(int(n) for n in LOST_MANY.findall(log))


@pytest.mark.timeout(300)
async def test_a_sentinel_failover_mid_stream_loses_nothing_and_the_app_resumes_by_itself(
    app_env: dict[str, str],
    unique: str,
    bootstrap: str,
    topic: str,
    producer: AIOKafkaProducer,
    tmp_path: Path,
) -> None:
    """The primary behind Sentinel is SIGKILLed a third of the way through 10,000 records.

    What ran is read from the app's own file of marks, not from Redis, which loses writes in a
    failover: Redis replicates asynchronously, so what the old primary acknowledged and had not
    yet sent to its replica is gone once the replica is promoted.

    A record runs twice only if it is handed to the handler again (a redelivery: a restart or a
    rebalance before its offset is committed) and its key then holds neither a claim nor a done
    mark. Right after the kill, that can be true only of
    - the records whose handler had started and whose done mark had not reached the replica:
      running at the kill, finished with the done mark still in the app's batch or on the wire,
      or acknowledged by the old primary but not replicated;
    - records run on a claim the old primary took and never replicated, which the app reports
      as claims lost when their done marks find nothing to complete.
    The test counts the done marks on the replica in one step after the kill, while it is still a
    replica (its primary is dead, so it takes no writes until promoted), and bounds the ids run
    twice by the sum. The app here runs alone and is never restarted mid-stream, so nothing is
    redelivered and the measured repeats are expected to be 0; the bound is what a redelivery
    soon after a failover could repeat at most.
    """
    group, out = f"{unique}-failover", tmp_path / "marks.txt"
    watermarks = await produce_ids(producer, topic, FAILOVER_MESSAGES)
    everything = set(range(FAILOVER_MESSAGES))
    with RedisSentinel() as deployment:  # its own: the primary is killed
        env = {
            **app_env,
            "TASKFLOW_REDIS_URL": deployment.url,
            "IDEM_TOPIC": topic,
            "IDEM_GROUP": group,
            "IDEM_OUT": str(out),
            "IDEM_DELAY_MS": "2",
        }
        with AppProcess(COUNTER, env=env) as app:
            await until_finished(out, FAILOVER_MESSAGES // 3, app, WAIT)
            _, replica = deployment.kill_primary()
            killed = time.monotonic()
            at_kill = Marks.read(out)  # so every id with a done mark on the replica is in it
            async with Redis(port=replica.port, client_name=TEST_CLIENT) as survivor:
                kept = await completed(survivor, group)
                role = (await survivor.role())[0]
            assert role == b"slave", "the replica was promoted before its done marks were counted"
            await asyncio.to_thread(app.wait_for, MARKS_FAILED.pattern, WAIT)
            await asyncio.to_thread(deployment.wait_promoted, replica, WAIT)
            promoted = time.monotonic()
            await asyncio.to_thread(app.wait_for, MARKS_WRITTEN, WAIT)
            answered = time.monotonic()
            at_recovery = Marks.read(out)
            await until_finished(out, FAILOVER_MESSAGES, app, WAIT * 2)
            committed = await until_committed(bootstrap, group, topic, watermarks)
            code = await asyncio.to_thread(app.stop, signal.SIGTERM, WAIT)

    final = Marks.read(out)
    lost = claims_lost(app.log)
    in_flight = len(at_kill.started) - kept  # started by then, no done mark on the replica
    print(
        f"\nSentinel failover at {len(at_kill.finished)} of {FAILOVER_MESSAGES} records: replica "
        f"promoted {promoted - killed:.1f}s and held-back done marks written "
        f"{answered - killed:.1f}s after the kill; just after it {at_kill.running} handler(s) "
        f"running and {len(at_kill.finished) - kept} finished without a done mark on the "
        f"replica ({kept} kept there); {len(at_recovery.finished) - len(at_kill.finished)} "
        f"handled from then until the done marks were written; claims refused while down: "
        f"{app.log.count(UNAVAILABLE)}; claims lost: {lost}; ids handled twice: "
        f"{final.repeated} (bound {in_flight + lost})"
    )
    assert code == 0
    assert set(final.finished) == everything, "a record was lost"
    assert committed == watermarks
    assert final.pids == {app.pid}  # one process all along: it resumed by itself
    assert len(at_recovery.finished) < FAILOVER_MESSAGES, "nothing was left after the failover"
    # One line when the store went, one when it is back; none per record or per retry.
    assert len(MARKS_FAILED.findall(app.log)) == 1
    assert app.log.count(MARKS_WRITTEN) == 1
    assert app.log.count(UNAVAILABLE) == app.log.count(ANSWERS) <= 1
    assert "whose lease ran out" not in app.log  # no done mark given up: the failover was shorter
    assert "crashed" not in app.log
    assert final.repeated <= in_flight + lost
