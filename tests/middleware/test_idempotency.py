"""Idempotency as users see it: duplicates run once and are committed, failures release the claim,
a message claimed elsewhere waits for the lease, store outages lose nothing, periodic ticks run
once, and bad settings are refused before anything starts."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

import taskflow.middleware.idempotency as idempotency
from taskflow import App, Backoff, ConfigurationError, Context, Message, StateError, StoreError
from taskflow.middleware.idempotency import Idempotency
from taskflow.stores import ClaimOutcome, MemoryIdempotencyStore, RedisIdempotencyStore
from taskflow.testing import ManualClock, TestClient
from taskflow.workers import ConsumerWorker
from tests._redis import REDIS_URL

FAST = Backoff(initial=0.01, maximum=0.01, jitter=0)


def recording_app(
    name: str, app_options: dict[str, object] | None = None, **options: object
) -> tuple[App, list[int]]:
    """An app whose consumer `on_event` of topic `events` records each value it runs."""
    app = App(name, **{"redis_url": "", **(app_options or {})})  # type: ignore[arg-type]
    handled: list[int] = []

    async def on_event(message: Message) -> None:
        handled.append(int(message.value))

    app.add_consumer(on_event, "events", **options)  # type: ignore[arg-type]
    return app, handled


def middleware_of(client: TestClient, name: str = "on_event") -> Idempotency:
    worker = client.runtime.worker(name)
    assert isinstance(worker, ConsumerWorker)
    layer = worker.processor.handler
    assert isinstance(layer, Idempotency)
    return layer


class Flag(logging.Handler):
    """Collects records at `level` and above whose text contains `text`; sets an event on one."""

    def __init__(self, text: str, level: int = logging.INFO) -> None:
        super().__init__(level)
        self.text = text
        self.event = asyncio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.text in message:
            self.messages.append(message)
            self.event.set()


class flagged:
    """`with flagged("app-name", "deferred") as flag:` attaches a Flag for the block.

    A worker logs under its app's name; the middleware's own lines go to taskflow.idempotency.
    """

    def __init__(self, logger: str, text: str, level: int = logging.INFO) -> None:
        self.logger = logging.getLogger(logger)
        self.flag = Flag(text, level)
        self.level = self.logger.level

    def __enter__(self) -> Flag:
        self.logger.addHandler(self.flag)
        self.logger.setLevel(min(self.logger.getEffectiveLevel(), self.flag.level))
        return self.flag

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self.flag)
        self.logger.setLevel(self.level)


# -- outcomes, on Redis ----------------------------------------------------------------------


@pytest.mark.redis
async def test_a_duplicate_runs_the_handler_once_and_both_are_committed(redis: Redis) -> None:
    app, handled = recording_app("dup", {"redis_url": REDIS_URL}, idempotent=True)
    async with TestClient(app) as client:
        tp, _ = await client.publish("events", 1, key="k", headers={"idempotency-key": "id-1"})
        _, second = await client.publish("events", 2, key="k", headers={"idempotency-key": "id-1"})
        await client.drain()
        assert client.committed("dup", "events", tp.partition) == second + 1
        assert middleware_of(client).skipped == 1

    assert handled == [1]
    assert await redis.get("taskflow:{dup}:idem:id-1") is not None
    assert (await redis.get("taskflow:{dup}:idem:id-1")).startswith(b"done:")
    assert await redis.pttl("taskflow:{dup}:idem:id-1") > 7 * 24 * 3600 * 1000 - 60_000


@pytest.mark.redis
async def test_without_a_key_a_message_is_known_by_its_offset_in_the_partition_ledger(
    redis: Redis,
) -> None:
    # As if a previous owner of the partition ran offset 0 and crashed before committing.
    await redis.hset("taskflow:{coords}:offsets:events:0", "base", 1)
    app, handled = recording_app("coords", {"redis_url": REDIS_URL}, idempotent=True)
    async with TestClient(app, partitions=1) as client:
        await client.publish("events", 1)
        await client.publish("events", 2)
        await client.drain()
        assert client.committed("coords", "events", 0) == 2

    assert handled == [2]
    # The ledger moved on to the commit position; no key per message was left behind, and the
    # partition's lease was given up when the consumer stopped.
    assert await redis.hgetall("taskflow:{coords}:offsets:events:0") == {b"base": b"2"}
    assert await redis.pttl("taskflow:{coords}:offsets:events:0") > 7 * 24 * 3600 * 1000 - 60_000
    assert sorted(await redis.keys("taskflow:{coords}:*")) == [
        b"taskflow:{coords}:offsets:events:0"
    ]


@pytest.mark.redis
async def test_an_idempotency_key_function_names_the_message(redis: Redis) -> None:
    app, handled = recording_app(
        "by-value",
        {"redis_url": REDIS_URL},
        idempotent=True,
        idempotency_key=lambda message: b"order-" + message.value[:1],
    )
    async with TestClient(app) as client:
        await client.publish("events", 11, key="a", headers={"idempotency-key": "x"})
        await client.publish("events", 12, key="b", headers={"idempotency-key": "y"})  # order-1
        await client.publish("events", 21, key="c")
        await client.drain()

    assert len(handled) == 2
    assert len({11, 12} & set(handled)) == 1  # one key, "order-1", though the headers differ
    assert 21 in handled
    assert (
        await redis.exists("taskflow:{by-value}:idem:order-1", "taskflow:{by-value}:idem:order-2")
        == 2
    )


@pytest.mark.redis
async def test_a_failing_handler_releases_its_claim_and_the_retry_completes(redis: Redis) -> None:
    app = App("flaky", redis_url=REDIS_URL, idempotent=True)
    attempts: list[bytes | None] = []

    async def on_event(message: Message) -> None:
        attempts.append(await redis.get("taskflow:{flaky}:idem:id-9"))  # claimed while running
        if len(attempts) == 1:
            raise RuntimeError("downstream hiccup")

    app.add_consumer(on_event, "events", retry=FAST)
    async with TestClient(app) as client:
        await client.publish("events", 1, headers={"idempotency-key": "id-9"})
        await client.drain()

    assert len(attempts) == 2
    assert attempts[0] != attempts[1]  # released, then claimed afresh by a new owner token
    assert all(owner and not owner.startswith(b"done:") for owner in attempts)
    assert await redis.get("taskflow:{flaky}:idem:id-9") == b"done:" + (attempts[1] or b"")


@pytest.mark.redis
async def test_a_message_claimed_elsewhere_is_deferred_then_runs_after_the_lease(
    redis: Redis,
) -> None:
    await redis.set("taskflow:{racing}:idem:id-5", "other-replica:1", px=400)
    app, handled = recording_app("racing", {"redis_url": REDIS_URL}, idempotent=True)
    with flagged("racing", "deferred") as flag:
        async with TestClient(app, partitions=1) as client:
            await client.publish("events", 5, headers={"idempotency-key": "id-5"})
            await flag.event.wait()
            assert handled == []
            assert client.committed("racing", "events", 0) is None
            await client.drain(timeout=5)
            assert middleware_of(client).deferred >= 1

    assert handled == [5]
    assert "claimed by another worker (taskflow:{racing}:idem:id-5)" in flag.messages[0]
    assert (await redis.get("taskflow:{racing}:idem:id-5")).startswith(b"done:")


# -- batches -----------------------------------------------------------------------------------


class CountingStore(RedisIdempotencyStore):
    """The Redis store, counting how often each kind of call goes to Redis."""

    def __init__(self, client: Redis) -> None:
        super().__init__(client)
        self.calls: Counter[str] = Counter()

    async def claim(self, key: str, owner: str, lease: float) -> ClaimOutcome:
        self.calls["claim"] += 1
        return await super().claim(key, owner, lease)

    async def claim_many(self, keys: Sequence[str], owner: str, lease: float) -> list[ClaimOutcome]:
        self.calls["claim_many"] += 1
        return await super().claim_many(keys, owner, lease)

    async def complete(self, key: str, owner: str, retention: float) -> bool:
        self.calls["complete"] += 1
        return await super().complete(key, owner, retention)

    async def complete_many(
        self, claims: Sequence[tuple[str, str]], retention: float
    ) -> list[bool]:
        self.calls["complete_many"] += 1
        return await super().complete_many(claims, retention)


@pytest.mark.redis
async def test_a_fetched_batch_is_claimed_in_one_round_trip_and_marked_done_in_few(
    redis: Redis,
) -> None:
    store = CountingStore(redis)
    app, handled = recording_app("batch", {"idempotency_store": store}, idempotent=True)
    client = TestClient(app, partitions=1)
    await client.broker.start()  # as a producer outside the app, before the consumer starts
    for value in range(200):  # waiting before the consumer starts: its first fetch takes them all
        await client.broker.publish(
            "events", str(value).encode(), headers=(("idempotency-key", b"%d" % value),)
        )
    async with client:
        await client.drain()
        await middleware_of(client).flush()

    assert handled == list(range(200))
    assert store.calls["claim_many"] == 1
    assert store.calls["claim"] == 0
    assert store.calls["complete"] == 0
    assert 1 <= store.calls["complete_many"] <= 20  # marks pile up while one batch is on its way
    values = await redis.mget([f"taskflow:{{batch}}:idem:{value}" for value in range(200)])
    assert all(value is not None and value.startswith(b"done:") for value in values)


@pytest.mark.redis
async def test_messages_left_unrun_at_shutdown_give_their_batch_claims_back(redis: Redis) -> None:
    app = App("unrun", redis_url=REDIS_URL)
    started = asyncio.Event()
    handled: list[int] = []

    async def on_event(message: Message) -> None:
        handled.append(int(message.value))
        started.set()
        await asyncio.sleep(0.2)

    app.add_consumer(on_event, "events", idempotent=True)
    client = TestClient(app, partitions=1)
    await client.broker.start()  # as a producer outside the app, before the consumer starts
    for value in range(10):
        await client.broker.publish(
            "events", str(value).encode(), headers=(("idempotency-key", b"%d" % value),)
        )
    async with client:
        await started.wait()  # the first runs; the other nine wait in the partition's lane

    assert handled == [0]
    assert (await redis.get("taskflow:{unrun}:idem:0")).startswith(b"done:")
    # The next owner of the partition can claim the rest at once, not after the lease.
    assert await redis.exists(*[f"taskflow:{{unrun}}:idem:{value}" for value in range(1, 10)]) == 0


@pytest.mark.redis
async def test_a_duplicate_right_behind_its_twin_is_skipped_before_the_done_mark_lands(
    redis: Redis,
) -> None:
    app, handled = recording_app("twins", {"redis_url": REDIS_URL}, idempotent=True)
    client = TestClient(app, partitions=1)
    await client.broker.start()  # as a producer outside the app, before the consumer starts
    for value in (1, 2, 3):
        await client.broker.publish(
            "events", str(value).encode(), headers=(("idempotency-key", b"same"),)
        )
    with flagged("twins", "deferred") as deferred:
        async with client:
            await client.drain()
            assert middleware_of(client).skipped == 2

    assert handled == [1]
    assert deferred.messages == []  # never waited on a claim of its own


# -- effects written with the done mark --------------------------------------------------------


def counting_app(name: str, fail_first: bool = False) -> tuple[App, list[int]]:
    """A consumer that counts each message in the Redis hash `counts` through ctx.transaction."""
    app = App(name, redis_url=REDIS_URL)
    attempts: list[int] = []

    async def on_event(message: Message, ctx: Context) -> None:
        attempts.append(int(message.value))
        ctx.transaction.hincrby("counts", message.value.decode(), 1)
        ctx.transaction.rpush("order", message.value)
        if fail_first and len(attempts) == 1:
            raise RuntimeError("downstream hiccup after queueing the effects")

    app.add_consumer(on_event, "events", idempotent=True, retry=FAST)
    return app, attempts


@pytest.mark.redis
async def test_effects_queued_on_the_transaction_land_with_the_done_mark(redis: Redis) -> None:
    app, attempts = counting_app("effects")
    async with TestClient(app, partitions=1) as client:
        for value in (1, 2, 3):
            await client.publish("events", value, headers={"idempotency-key": f"id-{value}"})
        await client.publish("events", 1, headers={"idempotency-key": "id-1"})  # a duplicate
        await client.drain()

    assert attempts == [1, 2, 3]
    assert await redis.hgetall("counts") == {b"1": b"1", b"2": b"1", b"3": b"1"}
    assert await redis.lrange("order", 0, -1) == [b"1", b"2", b"3"]
    for value in (1, 2, 3):
        assert (await redis.get(f"taskflow:{{effects}}:idem:id-{value}")).startswith(b"done:")


@pytest.mark.redis
async def test_effects_of_a_failed_attempt_are_dropped_and_the_retry_applies_its_own(
    redis: Redis,
) -> None:
    app, attempts = counting_app("retried", fail_first=True)
    async with TestClient(app, partitions=1) as client:
        await client.publish("events", 7, headers={"idempotency-key": "id-7"})
        await client.drain()

    assert attempts == [7, 7]
    assert await redis.hgetall("counts") == {b"7": b"1"}


@pytest.mark.redis
async def test_effects_of_a_handler_whose_claim_was_lost_are_dropped(redis: Redis) -> None:
    app = App("stolen", redis_url=REDIS_URL)

    async def on_event(message: Message, ctx: Context) -> None:
        ctx.transaction.incr("effect")
        # Meanwhile the lease ran out and another replica claimed the message.
        await redis.set("taskflow:{stolen}:idem:id-1", "other-replica:1", px=60_000)

    app.add_consumer(on_event, "events", idempotent=True)
    with flagged("taskflow.idempotency", "its effects were dropped", logging.ERROR) as flag:
        async with TestClient(app, partitions=1) as client:
            await client.publish("events", 1, headers={"idempotency-key": "id-1"})
            await client.drain()
            assert middleware_of(client).lost == 1

    assert await redis.get("effect") is None
    assert await redis.get("taskflow:{stolen}:idem:id-1") == b"other-replica:1"
    assert len(flag.messages) == 1


async def test_the_transaction_needs_an_idempotent_registration_on_redis() -> None:
    app = App("plain", idempotency_store=MemoryIdempotencyStore())
    errors: list[str] = []

    async def on_event(message: Message, ctx: Context) -> None:
        try:
            ctx.transaction.incr("effect")
        except StateError as exc:
            errors.append(str(exc))

    app.add_consumer(on_event, "events", name="plain_consumer")
    app.add_consumer(on_event, "events", name="memory_consumer", group="other", idempotent=True)
    async with TestClient(app) as client:
        await client.publish("events", 1)
        await client.drain()

    expected = (
        "{}: ctx.transaction needs idempotent=True with the Redis idempotency store "
        "(App(redis_url=...)); it is the claim that makes its commands apply once"
    )
    assert sorted(errors) == sorted(
        [expected.format("plain_consumer"), expected.format("memory_consumer")]
    )


# -- metrics -----------------------------------------------------------------------------------


async def test_each_outcome_is_counted_in_a_metric_when_telemetry_is_on() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    app = App("counted", idempotency_store=MemoryIdempotencyStore(), meter_provider=provider)

    async def on_event(message: Message) -> None:
        pass

    app.add_consumer(on_event, "events", idempotent=True)
    try:
        async with TestClient(app, partitions=1) as client:
            for value in (1, 2, 1, 1):
                await client.publish("events", value, headers={"idempotency-key": f"id-{value}"})
            await client.drain()
        data = reader.get_metrics_data()
    finally:
        provider.shutdown()

    points = {
        point.attributes["taskflow.idempotency.outcome"]: point.value
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "taskflow.idempotency.outcomes"
        for point in metric.data.data_points
        if point.attributes["taskflow.worker"] == "on_event"
    }
    assert points == {"ran": 2, "skipped": 2}


# -- the lease while a handler runs ----------------------------------------------------------


async def test_the_lease_is_renewed_while_a_long_handler_runs() -> None:
    store = MemoryIdempotencyStore()
    app = App("long", idempotency_store=store)
    seen: list[ClaimOutcome] = []

    async def on_event(message: Message) -> None:
        await asyncio.sleep(0.3)  # the work itself: three leases long
        seen.append(await store.claim("taskflow:{long}:idem:job", "intruder", 1))

    app.add_consumer(on_event, "events", idempotent=True, idempotency_lease=0.1)
    async with TestClient(app) as client:
        await client.publish("events", 1, headers={"idempotency-key": "job"})
        await client.drain()
        assert middleware_of(client).lost == 0

    assert seen == [ClaimOutcome.IN_PROGRESS]
    assert await store.claim("taskflow:{long}:idem:job", "later", 1) is ClaimOutcome.DONE


async def test_a_lost_claim_is_logged_and_the_handler_finishes() -> None:
    now = [0.0]
    store = MemoryIdempotencyStore(lambda: now[0])
    app = App("lost", idempotency_store=store)
    resume = asyncio.Event()

    async def on_event(message: Message) -> None:
        now[0] += 10  # the process stalls past its lease and another replica claims the message
        assert await store.claim("taskflow:{lost}:idem:job", "other", 60) is ClaimOutcome.CLAIMED
        await resume.wait()

    app.add_consumer(on_event, "events", idempotent=True, idempotency_lease=0.06)
    with flagged("lost", "lost the claim", logging.ERROR) as flag:
        async with TestClient(app) as client:
            await client.publish("events", 1, headers={"idempotency-key": "job"})
            await flag.event.wait()  # the renewal found out
            resume.set()
            await client.drain()
            await middleware_of(client).flush()  # the done mark's write, in the background
            assert middleware_of(client).lost == 2  # renewing, then completing

    assert "another worker may run it too; the handler goes on" in flag.messages[0]
    assert await store.complete("taskflow:{lost}:idem:job", "other", 60) is True  # untouched


# -- store errors ----------------------------------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def unreachable() -> AsyncIterator[RedisIdempotencyStore]:
    client = Redis(port=closed_port(), retry=Retry(NoBackoff(), 0))
    try:
        yield RedisIdempotencyStore(client)
    finally:
        await client.aclose()


class DownAfterStart(RedisIdempotencyStore):
    """A store whose Redis answered the start-up check and went away right after."""

    async def ping(self) -> None:
        pass


@pytest.fixture
async def down_after_start() -> AsyncIterator[RedisIdempotencyStore]:
    client = Redis(port=closed_port(), retry=Retry(NoBackoff(), 0))
    try:
        yield DownAfterStart(client)
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_with_fail_a_store_outage_runs_and_commits_nothing_and_loses_nothing(
    redis: Redis, down_after_start: RedisIdempotencyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(idempotency, "STORE_RETRY", 0.05)
    app, handled = recording_app("outage", {"idempotency_store": down_after_start}, idempotent=True)
    with flagged("taskflow.idempotency", "unavailable", logging.ERROR) as flag:
        async with TestClient(app, partitions=1) as client:
            await client.publish("events", 1, headers={"idempotency-key": "a"})
            await client.publish("events", 2, headers={"idempotency-key": "b"})
            await flag.event.wait()
            await asyncio.sleep(0.2)  # let the deferral come round against the dead store a while
            assert handled == []
            assert client.committed("outage", "events", 0) is None
            middleware_of(client).store = RedisIdempotencyStore(redis)  # Redis is back
            await client.drain()

    assert handled == [1, 2]
    assert len(flag.messages) == 1  # one line per outage, not one per attempt
    assert "on_event: the idempotency store is unavailable" in flag.messages[0]
    assert "nothing runs until it answers" in flag.messages[0]
    assert await redis.exists("taskflow:{outage}:idem:a", "taskflow:{outage}:idem:b") == 2


async def test_with_proceed_a_store_outage_runs_the_handler_and_logs_it(
    down_after_start: RedisIdempotencyStore,
) -> None:
    app, handled = recording_app(
        "proceed",
        {"idempotency_store": down_after_start},
        idempotent=True,
        on_store_error="proceed",
    )
    with flagged("proceed", "runs without an idempotency claim", logging.WARNING) as flag:
        async with TestClient(app) as client:
            await client.publish("events", 1, headers={"idempotency-key": "a"})
            await client.publish("events", 2, headers={"idempotency-key": "a"})
            await client.drain()
            assert middleware_of(client).unguarded == 2

    assert sorted(handled) == [1, 2]  # unguarded: a duplicate runs again
    assert len(flag.messages) == 2


# -- periodic tasks --------------------------------------------------------------------------


@pytest.mark.redis
async def test_an_idempotent_periodic_task_runs_once_per_tick_across_replicas(
    redis: Redis,
) -> None:
    clock = ManualClock()
    runs: list[object] = []

    def replica() -> App:
        app = App("reports", redis_url=REDIS_URL, clock=clock)

        async def nightly(ctx: Context) -> None:
            runs.append(ctx.scheduled_at)

        app.add_schedule(nightly, timedelta(hours=1), idempotent=True)
        return app

    async with TestClient(replica()) as one, TestClient(replica()) as two:
        await one.run_schedule("nightly")
        await two.run_schedule("nightly")
        await one.run_schedule("nightly")
        assert runs == [clock.now()]
        await clock.advance(3600)
        await two.run_schedule("nightly")
        await one.run_schedule("nightly")

    assert runs == [clock.now() - timedelta(hours=1), clock.now()]
    tick = f"taskflow:{{reports:nightly}}:idem:{clock.now().isoformat()}"
    assert (await redis.get(tick)).startswith(b"done:")


async def ignore(message: Message) -> None:
    pass


async def tick() -> None:
    pass


async def test_the_app_wide_switch_covers_consumers_and_periodic_tasks() -> None:
    app = App("everything", idempotent=True, idempotency_store=MemoryIdempotencyStore())
    app.add_consumer(ignore, "events", name="on_event")
    app.add_consumer(ignore, "other", name="plain", idempotent=False)
    app.add_schedule(tick, 60)

    assert [spec.idempotent for spec in app.consumers] == [True, False]
    assert app.schedules[0].idempotent is True


# -- configuration ---------------------------------------------------------------------------


async def test_an_explicit_redis_store_that_does_not_answer_stops_the_app_before_it_starts(
    unreachable: RedisIdempotencyStore,
) -> None:
    app, _ = recording_app("dead-store", {"idempotency_store": unreachable}, idempotent=True)
    started: list[bool] = []

    @app.on_startup
    async def note() -> None:
        started.append(True)

    with pytest.raises(StoreError, match="the idempotency store's Redis does not answer"):
        async with TestClient(app):
            pass
    assert started == []


async def test_idempotency_without_a_store_is_refused_before_anything_starts() -> None:
    app, _ = recording_app("no-store", idempotent=True)
    started: list[bool] = []

    @app.on_startup
    async def note() -> None:
        started.append(True)

    with pytest.raises(ConfigurationError) as caught:
        async with TestClient(app):
            pass
    assert str(caught.value) == (
        "on_event: idempotent=True keeps its claims in Redis; configure one with "
        "App(redis_url=...), --redis or TASKFLOW_REDIS_URL, or pass "
        "App(idempotency_store=MemoryIdempotencyStore()) for tests and single-process dev"
    )
    assert started == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"idempotent": True, "idempotency_key": "order_id"}, "idempotency_key is a function"),
        ({"idempotency_key": lambda m: m.key}, "idempotency_key= needs idempotent=True"),
        ({"idempotent": "yes"}, "idempotent is True or False"),
        ({"idempotent": True, "idempotency_lease": 0}, "idempotency_lease must be a positive"),
        (
            {"idempotent": True, "idempotency_retention": timedelta(days=-1)},
            "idempotency_retention must be a positive",
        ),
        ({"idempotent": True, "on_store_error": "ignore"}, "on_store_error is 'fail' or"),
    ],
)
def test_bad_idempotency_options_are_refused_at_registration(
    options: dict[str, object], message: str
) -> None:
    app = App("bad", idempotency_store=MemoryIdempotencyStore())
    with pytest.raises(ConfigurationError, match=message):
        app.add_consumer(ignore, "events", **options)  # type: ignore[arg-type]


def test_a_store_without_the_protocol_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="idempotency_store needs async claim"):
        App("bad", idempotency_store=object())  # type: ignore[arg-type]
