"""Three replicas (real ``taskflow run`` processes) of one app share its periodic task via Redis.

The app (`tests.apps.fleet_recorder`) records each run, ``<tick> <pid> <unix time>``, in Redis as
it starts and as it ends; the fleet's own tick claims live in the same database.

- Every second for 30 s, with one replica SIGKILLed half-way: every tick runs exactly once, none
  twice, none missed, and the two left carry on without a gap.
- A job of 2.5 s every second: no two runs overlap, whichever replicas run them.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from taskflow.runner import EXIT_CLEAN
from taskflow.stores import RedisScheduleStore
from taskflow.stores.connect import redis_client
from tests._process import AppProcess
from tests._redis import REDIS_URL
from tests._redis_deployments import RedisCluster, RedisSentinel

pytestmark = pytest.mark.redis

APP = "tests.apps.fleet_recorder:app"
REPLICAS = 3
WAIT = 30.0  # seconds: the bound of every wait for a replica
RUNNING = r"app fleet running 1 worker\(s\): beat"


@dataclass(frozen=True, slots=True)
class Run:
    tick: float
    pid: int
    at: float  # unix time, as the replica saw it


async def runs(redis: Redis, which: str) -> list[Run]:
    rows = []
    for raw in await redis.lrange(f"runs:{which}", 0, -1):
        tick, pid, at = raw.decode().split()
        rows.append(Run(float(tick), int(pid), float(at)))
    return rows


@contextmanager
def fleet(**env: str) -> Iterator[list[AppProcess]]:
    """`REPLICAS` replicas of the app, started one after another, each up and scheduling."""
    env = {"TASKFLOW_REDIS_URL": REDIS_URL, **env}  # a later TASKFLOW_REDIS_URL wins
    with ExitStack() as stack:
        replicas = [stack.enter_context(AppProcess(APP, env=env)) for _ in range(REPLICAS)]
        for replica in replicas:
            replica.wait_for(RUNNING, WAIT)
        yield replicas


async def between_runs(redis: Redis) -> None:
    """Wait for the next x.5 s of the wall clock at which no run holds the task's lease.

    Runs start on whole seconds and take a few milliseconds, so at x.5 none is in flight. A
    replica killed mid-run would hold the task until its lease runs out (30 s here), skipping
    ticks: that is the design (no overlap, ever), but not this scenario.
    """
    for _ in range(5):
        now = time.time()
        await asyncio.sleep((math.floor(now) + 0.5 - now) % 1.0)  # to a moment, not for an event
        if not await redis.exists("taskflow:{fleet:beat}:running"):
            return
    raise AssertionError("a run held the lease at every half second")


async def test_three_replicas_run_every_tick_exactly_once_through_a_kill(redis: Redis) -> None:
    with fleet() as replicas:
        up = time.time()
        await asyncio.sleep(12)  # the scenario's first part, not a wait for something
        await between_runs(redis)
        latest = (await runs(redis, "started"))[-1]
        victim = next(r for r in replicas if r.pid == latest.pid)  # the one that ran last
        victim.proc.kill()
        assert victim.wait(WAIT) == -signal.SIGKILL
        killed = time.time()
        await asyncio.sleep(up + 30 - time.time())  # the rest of the 30 s
        stopped = time.time()
        survivors = [replica for replica in replicas if replica is not victim]
        for replica in survivors:
            replica.send(signal.SIGTERM)
        for replica in survivors:
            assert replica.wait(WAIT) == EXIT_CLEAN

    started, finished = await runs(redis, "started"), await runs(redis, "finished")
    counts = Counter(run.tick for run in started)
    twice = sorted(tick for tick, count in counts.items() if count > 1)
    assert twice == [], f"ticks run more than once: {twice}"
    expected = range(math.ceil(up), math.floor(stopped))  # every whole second all along
    missed = [tick for tick in expected if tick not in counts]
    assert missed == [], f"ticks missed: {missed}"
    assert len(expected) >= 29
    assert sorted(run.tick for run in finished) == sorted(counts)  # every run ran to its end
    assert not [run for run in started if run.pid == victim.pid and run.at > killed]
    after_kill = {run.pid for run in started if run.tick > killed}
    assert after_kill <= {replica.pid for replica in survivors}
    assert after_kill  # the two left carried on
    last = await RedisScheduleStore(redis, "fleet").last_run("beat")
    assert last is not None
    assert last.outcome == "ok"


async def test_a_job_longer_than_its_interval_never_overlaps_across_replicas(
    redis: Redis,
) -> None:
    with fleet(FLEET_JOB_SECONDS="2.5") as replicas:
        await asyncio.sleep(9)  # the scenario: about three runs and six skipped ticks
        for replica in replicas:
            replica.send(signal.SIGTERM)
        for replica in replicas:
            assert replica.wait(WAIT) == EXIT_CLEAN

    started, finished = await runs(redis, "started"), await runs(redis, "finished")
    assert len(started) >= 3
    spans = sorted(
        (start.at, end.at, start.pid)
        for start in started
        for end in finished
        if (end.tick, end.pid) == (start.tick, start.pid)
    )
    assert len(spans) == len(started)  # each run, shutdown included, finished
    overlapping = [(a, b) for a, b in itertools.pairwise(spans) if b[0] < a[1]]
    assert overlapping == []
    skipped = sum(
        replica.log.count("skipped: the previous run is still going on") for replica in replicas
    )
    assert skipped >= 3
    assert len(Counter(run.tick for run in started)) == len(started)  # and no tick twice


async def test_three_replicas_on_a_redis_cluster_run_every_tick_exactly_once(
    redis: Redis, redis_cluster: RedisCluster
) -> None:
    # The fleet's claims, leases and records live on the cluster; the app's own list of runs on
    # the tests' Redis, where it is read back.
    with fleet(TASKFLOW_REDIS_URL=redis_cluster.url, FLEET_RECORD_URL=REDIS_URL) as replicas:
        up = time.time()
        await asyncio.sleep(10)  # the scenario, not a wait for something
        stopped = time.time()
        for replica in replicas:
            replica.send(signal.SIGTERM)
        for replica in replicas:
            assert replica.wait(WAIT) == EXIT_CLEAN

    started = await runs(redis, "started")
    counts = Counter(run.tick for run in started)
    twice = sorted(tick for tick, count in counts.items() if count > 1)
    assert twice == [], f"ticks run more than once: {twice}"
    expected = range(math.ceil(up), math.floor(stopped))
    missed = [tick for tick in expected if tick not in counts]
    assert missed == [], f"ticks missed: {missed}"
    assert len(expected) >= 9
    async with redis_client(redis_cluster.url) as cluster:
        assert cluster is not None
        last = await RedisScheduleStore(cluster, "fleet").last_run("beat")
    assert last is not None
    assert last.tick.timestamp() >= math.floor(stopped) - 2  # the fleet recorded on the cluster


async def test_a_sentinel_failover_is_logged_once_and_ticks_resume_by_themselves(
    redis: Redis,
) -> None:
    # Its own deployment: the primary is killed. The app's list of runs stays on the tests' Redis.
    with RedisSentinel() as deployment:
        old = deployment.primary_port()
        env = {"TASKFLOW_REDIS_URL": deployment.url, "FLEET_RECORD_URL": REDIS_URL}
        with AppProcess(APP, env=env) as replica:
            replica.wait_for(RUNNING, WAIT)
            await asyncio.sleep(3)  # a few ticks on the first primary
            deployment.primary.stop(graceful=False)  # SIGKILL
            killed = time.time()
            replica.wait_for("could not be claimed", WAIT)
            replica.wait_for("Redis answers again", WAIT)
            recovered = time.time()
            assert deployment.primary_port() != old  # Sentinel promoted the replica
            await asyncio.sleep(6)  # ticks on the new primary
            stopped = time.time()
            replica.send(signal.SIGTERM)
            assert replica.wait(WAIT) == EXIT_CLEAN

    assert replica.log.count("could not be claimed") == 1  # the outage, once
    assert replica.log.count("Redis answers again") == 1
    started = await runs(redis, "started")
    counts = Counter(run.tick for run in started)
    assert [tick for tick, count in counts.items() if count > 1] == []
    assert any(run.tick < killed for run in started)
    after = range(math.ceil(recovered) + 1, math.floor(stopped))
    missed = [tick for tick in after if tick not in counts]
    assert missed == [], f"ticks missed after the failover: {missed}"
    assert len(after) >= 3
