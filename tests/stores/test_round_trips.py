"""What a periodic tick and a global rate-limit acquire cost in Redis, counted by Redis itself.

Each test reads the server's own counters before and after the work, through a client of its
own (no mock, no wrapped connection), in the steady state: the scripts already loaded and the
connections open. (The first call of a script costs more, once: its NOSCRIPT answer, a
``SCRIPT LOAD`` on each primary, the call again; the last test counts that too.)

- **Round trips** are the delta of ``total_reads_processed`` (``INFO stats``): the server's count
  of reads from client connections. A client waits for each reply before it sends its next
  request, so every round trip is at least one read; a request is one small write on loopback and
  is read at once, so it is exactly one. (A request split across reads would count twice: the
  counts can only err high, never hide a round trip.)
- **Commands** are the delta of each command's ``calls`` (``INFO commandstats``). Redis counts
  the commands a Lua script runs under their own names too, so ``evalsha`` is what the client
  sent and the rest is what the scripts did.
- The reading's own ``INFO`` (one read and one ``info`` call per server) is left out.

The counters are server-wide, so each deployment is private to this test session: a
``redis-server`` of this module's own, and the session's 3-node cluster (summed over its nodes).
Behind Sentinel the client is the single server's; the Sentinel's and the replica's own traffic to
the primary (``PING``, ``INFO``, ``REPLCONF``) shares its counters, so it is not counted here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Collection, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, ClassVar

import pytest
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from taskflow import App, Context, Message, Middleware
from taskflow.handler import Handler, Job
from taskflow.message import TopicPartition
from taskflow.middleware.offsets import LINGER
from taskflow.stores import RedisRateLimitStore, RedisScheduleStore, TickClaim
from taskflow.stores.connect import redis_client
from taskflow.stores.keys import rate_limit
from taskflow.testing import ManualClock, TestClient
from tests import _redis_deployments
from tests._redis_server import RedisServer

if TYPE_CHECKING:
    from taskflow.stores.connect import RedisClient

pytestmark = pytest.mark.redis

START = datetime(2026, 1, 1, tzinfo=UTC)  # on the grid
TICKS = 5  # ticks measured, after the warm-up
WARM_UP = 2  # ticks that load the scripts and open the connections

TICK_RUN_HERE = 2
"""Round trips of a tick run here: its claim (which takes the lease and marks the run running),
then the record of how it ended (which releases the lease). One ``EVALSHA`` each."""
CLAIM_COMMANDS = 4
"""What the claim script runs when it wins: ``SET`` next, ``SET NX`` the tick, ``SET NX`` the
lease, ``HSET`` the last run."""
LOST_CLAIM_COMMANDS = 3
"""What the claim script runs when another replica has the tick: ``SET`` next, ``SET NX`` the tick
(refused), ``GET`` who claimed it."""
FINISH_COMMANDS = 4
"""What the finish script runs: ``GET`` the lease, ``DEL`` it, ``HMGET`` the last run's tick and
replica, ``HSET`` the outcome."""
ACQUIRE_COMMANDS = 3
"""What the rate-limit script runs to book a run: ``TIME``, ``GET``, ``SET``."""


@dataclass(frozen=True, slots=True)
class Deployment:
    name: str
    url: str
    ports: Sequence[int]
    """Every server that holds keys."""


@dataclass(frozen=True, slots=True)
class Reading:
    reads: int
    calls: Counter[str]


@dataclass(frozen=True, slots=True)
class Cost:
    """What the servers did between two readings."""

    round_trips: int
    calls: Counter[str]
    """Commands run, by name: those a client sent and those its scripts ran."""

    @property
    def commands(self) -> int:
        return self.calls.total()


class Meter:
    """Reads a deployment's counters, through a client of each of its servers."""

    def __init__(self, ports: Sequence[int]) -> None:
        self.probes = [Redis(port=port) for port in ports]

    async def read(self) -> Reading:
        reads, calls = 0, Counter[str]()
        for probe in self.probes:
            info = await probe.info("stats", "commandstats")
            reads += int(info["total_reads_processed"])
            calls.update(
                {
                    name.removeprefix("cmdstat_"): int(stats["calls"])
                    for name, stats in info.items()
                    if name.startswith("cmdstat_")
                }
            )
        return Reading(reads, calls)

    async def since(self, before: Reading) -> Cost:
        """The cost of what happened since `before`, this reading's own INFO left out."""
        after = await self.read()
        calls = after.calls - before.calls
        calls.subtract({"info": len(self.probes)})
        return Cost(after.reads - before.reads - len(self.probes), +calls)

    async def aclose(self) -> None:
        for probe in self.probes:
            await probe.aclose()


@pytest.fixture(scope="module")
def private_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["redis", "cluster"])
def deployment(request: pytest.FixtureRequest) -> Deployment:
    if request.param == "cluster":
        cluster: _redis_deployments.RedisCluster = request.getfixturevalue("redis_cluster")
        return Deployment("cluster", cluster.url, cluster.ports)
    server: RedisServer = request.getfixturevalue("private_redis")
    return Deployment("redis", server.url, [server.port])


@pytest.fixture
async def meter(deployment: Deployment) -> AsyncIterator[Meter]:
    meter = Meter(deployment.ports)
    try:
        yield meter
    finally:
        await meter.aclose()


def unique(name: str) -> str:
    """An app name no earlier test wrote keys under, on a server kept for the session."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


# -- periodic ticks ------------------------------------------------------------------------

# The one line a replica logs per tick it handles, once its last Redis reply is in.
HANDLED = re.compile(r" is claimed by | done in ")


class Lines(logging.Handler):
    """Counts an app's lines that say a tick was handled; `reach` waits for a count."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.count = 0
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if HANDLED.search(record.getMessage()):
            self.count += 1
            self._changed.set()

    async def reach(self, count: int) -> None:
        async with asyncio.timeout(10):
            while self.count < count:
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def app_name() -> Iterator[str]:
    name = unique("ticks")
    logger = logging.getLogger(name)
    logger.setLevel(logging.DEBUG)
    yield name
    logger.setLevel(logging.NOTSET)


async def tick_costs(deployment: Deployment, meter: Meter, name: str, replicas: int) -> Cost:
    """The cost of `TICKS` ticks of a task every second, on `replicas` replicas of one app."""
    clock = ManualClock(START)
    lines = Lines()

    async def beat(ctx: Context) -> None:
        pass

    apps = [App(name, redis_url=deployment.url, clock=clock) for _ in range(replicas)]
    for app in apps:
        app.add_schedule(beat, 1, name="beat")
    async with AsyncExitStack() as stack:
        logging.getLogger(name).addHandler(lines)
        stack.callback(logging.getLogger(name).removeHandler, lines)
        for app in apps:
            await stack.enter_async_context(TestClient(app))
        for n in range(1, WARM_UP + 1):
            await clock.advance(1)
            await lines.reach(n * replicas)
        before = await meter.read()
        for n in range(WARM_UP + 1, WARM_UP + TICKS + 1):
            await clock.advance(1)
            await lines.reach(n * replicas)
        return await meter.since(before)


async def test_a_tick_run_here_costs_two_round_trips(
    deployment: Deployment, meter: Meter, app_name: str
) -> None:
    cost = await tick_costs(deployment, meter, app_name, replicas=1)
    assert cost.round_trips == TICKS * TICK_RUN_HERE
    assert cost.calls["evalsha"] == TICKS * TICK_RUN_HERE  # each round trip, one script
    assert "script|load" not in cost.calls  # no script was loaded again
    assert cost.commands == TICKS * (TICK_RUN_HERE + CLAIM_COMMANDS + FINISH_COMMANDS)


async def test_every_other_replica_pays_one_round_trip_per_tick(
    deployment: Deployment, meter: Meter, app_name: str
) -> None:
    cost = await tick_costs(deployment, meter, app_name, replicas=3)
    # Per tick: the runner's claim and record, and each of the two others' lost claim.
    assert cost.round_trips == TICKS * (TICK_RUN_HERE + 2)
    assert cost.calls["evalsha"] == cost.round_trips
    assert "script|load" not in cost.calls
    lost = 2 * (1 + LOST_CLAIM_COMMANDS)
    assert cost.commands == TICKS * (TICK_RUN_HERE + CLAIM_COMMANDS + FINISH_COMMANDS + lost)


async def test_renewing_a_lease_costs_one_round_trip(
    deployment: Deployment, meter: Meter, app_name: str
) -> None:
    async with redis_client(deployment.url) as client:
        assert client is not None
        store = RedisScheduleStore(client, app_name)
        found, _ = await store.claim(
            "beat", START, "a:1", ttl=60, lease=30, started=START, next_tick=START
        )
        assert found is TickClaim.RUN
        assert await store.renew("beat", "a:1", 30)  # the script is loaded now
        before = await meter.read()
        assert await store.renew("beat", "a:1", 30)
        cost = await meter.since(before)
    assert cost.round_trips == 1
    assert cost.calls == Counter({"evalsha": 1, "get": 1, "pexpire": 1})


# -- global rate limits --------------------------------------------------------------------


async def test_a_message_under_a_global_limit_costs_one_round_trip(
    deployment: Deployment, meter: Meter
) -> None:
    # One partition: messages run one after another, on one connection. A rate no run waits for.
    app = App(unique("shop"), redis_url=deployment.url)
    handled: list[int] = []

    async def on_order(message: Message) -> None:
        handled.append(int(message.value))

    app.add_consumer(on_order, "orders", rate_limit="1000000/s", rate_limit_scope="global")
    count = 10
    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", -1)
        await client.drain()
        before = await meter.read()
        for n in range(count):
            await client.publish("orders", n)
        await client.drain()
        cost = await meter.since(before)
    assert handled == [-1, *range(count)]
    assert cost.round_trips == count
    assert cost.calls["evalsha"] == count
    assert cost.commands == count * (1 + ACQUIRE_COMMANDS)


async def test_an_acquire_costs_one_round_trip_whether_it_books_or_waits(
    deployment: Deployment, meter: Meter
) -> None:
    key = rate_limit(unique("shop"), "on_order")
    async with redis_client(deployment.url) as client:
        assert client is not None
        store = RedisRateLimitStore(client)
        await store.acquire(f"{key}:warm-up", 1.0, 0.0)  # the script is loaded (same node)
        before = await meter.read()
        assert await store.acquire(key, 60.0, 0.0) == 0.0
        booked = await meter.since(before)
        before = await meter.read()
        assert await store.acquire(key, 60.0, 0.0) > 0
        waits = await meter.since(before)
    assert booked.round_trips == waits.round_trips == 1
    assert booked.calls == Counter({"evalsha": 1, "time": 1, "get": 1, "set": 1})
    assert waits.calls == Counter({"evalsha": 1, "time": 1, "get": 1})  # nothing written


async def test_the_first_call_of_a_script_loads_it_on_every_primary_once(
    deployment: Deployment, meter: Meter
) -> None:
    key = rate_limit(unique("shop"), "on_order")
    async with redis_client(deployment.url) as client:
        assert client is not None
        store = RedisRateLimitStore(client)
        for probe in meter.probes:
            await probe.script_flush()
        await opened(client)
        before = await meter.read()
        await store.acquire(key, 0.001, 0.0)
        first = await meter.since(before)
        before = await meter.read()
        await store.acquire(f"{key}:next", 0.001, 0.0)
        second = await meter.since(before)
    # EVALSHA, answered NOSCRIPT; SCRIPT LOAD on each primary; EVALSHA again.
    primaries = len(deployment.ports)
    assert first.round_trips == 2 + primaries
    assert (first.calls["evalsha"], first.calls["script|load"]) == (2, primaries)
    assert second.round_trips == 1


async def opened(client: RedisClient) -> None:
    """Open the client's connection to each primary, so that no reading counts a handshake."""
    if isinstance(client, RedisCluster):
        await client.ping(target_nodes=RedisCluster.ALL_NODES)
    else:
        await client.ping()


# -- idempotent consumers --------------------------------------------------------------------

RECORDS = 2_000
"""Published before the consumer fetches, so it fetches them in batches of up to 500."""
WARM = 1_000
"""Records run first, so the scripts are loaded and every connection the run needs is open."""


SCRIPT_COMMANDS = {"get", "set", "pttl", "hget", "hlen", "hset", "hkeys", "hdel", "pexpire"}
"""What the idempotency scripts run."""
HANDSHAKE = ("hello", "client|setinfo", "client|setname", "select")
"""What a new connection sends before its first command."""


class BatchCounter:
    """A batch-aware middleware that only counts the fetched batches it is shown."""

    seen: ClassVar[list[BatchCounter]] = []

    def __init__(self, next: Handler) -> None:
        self.next = next
        self.batches = self.records = 0
        BatchCounter.seen.append(self)

    async def __call__(self, job: Job, ctx: Context) -> None:
        await self.next(job, ctx)

    async def prefetch(self, messages: Sequence[Message]) -> None:
        self.batches += 1
        self.records += len(messages)

    async def flush(self) -> None:
        pass

    async def discard(self, partitions: Collection[TopicPartition]) -> None:
        pass


@pytest.mark.parametrize("key", ["offset", "value"])
async def test_an_idempotent_consumer_pays_one_round_trip_per_fetched_batch(
    deployment: Deployment, meter: Meter, key: str
) -> None:
    # Each fetched batch is claimed with one script call, which also carries the finishes of
    # the records run since the call before; finishes that no claim comes to carry (the last
    # batch's) go in a call of their own. So: at most two per batch, and none per record.
    app = App(unique("shop"), redis_url=deployment.url, middleware=[Middleware(BatchCounter)])
    handled: set[int] = set()

    async def on_order(message: Message) -> None:
        handled.add(int(message.value))

    options = {"idempotency_key": lambda m: m.value} if key == "value" else {}
    app.add_consumer(on_order, "orders", idempotent=True, **options)
    BatchCounter.seen.clear()
    async with TestClient(app, partitions=4) as client:
        for n in range(-WARM, 0):  # warm-up: scripts loaded, connections open, partitions held
            await client.publish("orders", n, key=str(n))
        await client.drain()
        await asyncio.sleep(LINGER * 4)  # and their finishes are written
        for counter in BatchCounter.seen:
            counter.batches = counter.records = 0
        before = await meter.read()
        for n in range(RECORDS):  # no await yields here: all of it is there at the next fetch
            await client.publish("orders", n, key=str(n))
        await client.drain()
        await asyncio.sleep(LINGER * 4)  # the last finishes go out on their own
        cost = await meter.since(before)

    batches = sum(counter.batches for counter in BatchCounter.seen)
    assert handled == set(range(-WARM, RECORDS))
    assert sum(counter.records for counter in BatchCounter.seen) == RECORDS
    # What the client sent is script calls only (the other commands are the scripts' own), and
    # each call is one request and its answer.
    # A connection the pool opens meanwhile (two calls at once: a batch's claim and a write of
    # done marks) shakes hands first; that is not the batches' cost, and is left out.
    handshakes = sum(cost.calls.pop(name, 0) for name in HANDSHAKE)
    sent = cost.calls["evalsha"]
    assert set(cost.calls) <= {"evalsha", *SCRIPT_COMMANDS}, cost.calls
    assert sent <= 2 * batches
    if key == "offset":
        # A few numbers per partition and call: each request is read at once, and the scripts
        # touch a few fields per partition, never a key per record.
        assert cost.round_trips - handshakes == sent
        assert cost.commands < RECORDS / 4
    else:
        # Hundreds of keys per call: requests of tens of KB, which Redis reads 16 KB at a time.
        assert cost.round_trips >= sent
    print(
        f"\n{deployment.name}, key {key}: {RECORDS} records in {batches} fetched batches "
        f"cost {sent} script calls ({cost.round_trips} reads) and {cost.commands} commands"
    )
