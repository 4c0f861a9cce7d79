"""The operator commands' work, in process: a triggered run goes through the fleet's claim, so it
runs once and never beside another run of its task; the fleet's records tell the last run; what
`send` publishes."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from redis.asyncio import Redis

from taskflow import App, Context, MsgpackCodec, ProtobufCodec
from taskflow.clock import Clock
from taskflow.exceptions import ConfigurationError, PublishError
from taskflow.operations import record_from_text, recorded_runs, send, trigger
from taskflow.stores import RedisScheduleStore, TickClaim
from taskflow.testing import ManualClock
from tests._redis import REDIS_URL

Job = Callable[[Context], Awaitable[None]]
LEASE = 30.0


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for variable in [name for name in os.environ if name.startswith("TASKFLOW_")]:
        monkeypatch.delenv(variable)


def make_app(job: Job, *, redis_url: str | None = REDIS_URL, clock: Clock | None = None) -> App:
    """An app ``ops`` whose task ``beat`` runs `job`; its startup hook sets ``app.state.ready``.

    Each call makes a new App: two of them with one name are two replicas (or triggers).
    """
    app = App("ops", redis_url=redis_url, clock=clock)

    @app.on_startup
    async def get_ready() -> None:
        app.state.ready = True

    app.add_schedule(job, timedelta(hours=1), name="beat", lease=LEASE)

    @app.every(hours=1, fleet=False)
    async def local(ctx: Context) -> None: ...

    return app


# -- trigger -----------------------------------------------------------------------------------


@pytest.mark.redis
async def test_a_trigger_runs_the_task_once_through_the_claim_and_records_it(
    redis: Redis,
) -> None:
    seen: list[tuple[bool, object]] = []

    async def beat(ctx: Context) -> None:
        seen.append((ctx.state.ready, ctx.scheduled_at))

    result = await trigger(make_app(beat), "beat")

    assert (result.outcome, result.claimed, result.error) == ("ok", True, None)
    assert seen == [(True, result.tick.scheduled_at)]  # the startup hook ran first
    store = RedisScheduleStore(redis, "ops")
    last = await store.last_run("beat")
    assert last is not None
    assert (last.tick, last.outcome) == (result.tick.scheduled_at, "ok")
    assert not await redis.exists("taskflow:{ops:beat}:running")  # the lease is released
    assert await store.claimer("beat", result.tick.scheduled_at) is not None


@pytest.mark.redis
async def test_while_a_triggered_run_goes_on_no_replica_or_other_trigger_runs_the_task(
    redis: Redis,
) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    runs = 0

    async def beat(ctx: Context) -> None:
        nonlocal runs
        runs += 1
        started.set()
        await release.wait()

    first = asyncio.create_task(trigger(make_app(beat), "beat"))
    await started.wait()

    second = await trigger(make_app(beat), "beat")
    store = RedisScheduleStore(redis, "ops")
    now = ManualClock().now()
    replica, holder = await store.claim(
        "beat", now, "replica", ttl=60, lease=LEASE, started=now, next_tick=now
    )
    release.set()
    done = await first

    assert (second.outcome, second.ran) == ("busy", False)
    assert (replica, holder) == (TickClaim.BUSY, second.holder)
    assert done.outcome == "ok"
    assert runs == 1


@pytest.mark.redis
async def test_a_trigger_does_not_run_while_a_replica_runs_the_task(redis: Redis) -> None:
    store = RedisScheduleStore(redis, "ops")
    now = ManualClock().now()
    await store.claim("beat", now, "replica:1", ttl=60, lease=LEASE, started=now, next_tick=now)
    runs = 0

    async def beat(ctx: Context) -> None:
        nonlocal runs
        runs += 1

    result = await trigger(make_app(beat), "beat")

    assert (result.outcome, result.holder, runs) == ("busy", "replica:1", 0)
    last = await store.last_run("beat")
    assert last is not None
    assert last.tick == now  # the replica's run, untouched


@pytest.mark.redis
async def test_a_failing_run_is_reported_and_recorded_as_failed(redis: Redis) -> None:
    async def beat(ctx: Context) -> None:
        raise ValueError("boom")

    result = await trigger(make_app(beat), "beat")

    assert result.outcome == "failed"
    assert isinstance(result.error, ValueError)
    last = await RedisScheduleStore(redis, "ops").last_run("beat")
    assert last is not None
    assert last.outcome == "failed"
    assert not await redis.exists("taskflow:{ops:beat}:running")


@pytest.mark.redis
async def test_a_run_whose_lease_is_lost_is_cancelled_and_recorded_as_lost(redis: Redis) -> None:
    clock = ManualClock()
    started = asyncio.Event()
    cancelled = False

    async def beat(ctx: Context) -> None:
        nonlocal cancelled
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled = True
            raise

    run = asyncio.create_task(trigger(make_app(beat, clock=clock), "beat"))
    await started.wait()
    await clock.wait_for_sleepers(1)  # the lease keeper
    await redis.set("taskflow:{ops:beat}:running", "another-replica")  # as if the lease ran out
    await clock.advance(LEASE / 3)
    result = await run

    assert (result.outcome, cancelled) == ("lost", True)
    last = await RedisScheduleStore(redis, "ops").last_run("beat")
    assert last is not None
    assert last.outcome == "lost"
    assert await redis.get("taskflow:{ops:beat}:running") == b"another-replica"  # not ours to drop


async def test_without_redis_a_trigger_just_runs_here() -> None:
    runs = 0

    async def beat(ctx: Context) -> None:
        nonlocal runs
        runs += 1

    result = await trigger(make_app(beat, redis_url=None), "beat")

    assert (result.outcome, result.claimed, runs) == ("ok", False, 1)


async def test_an_unknown_task_is_refused_with_the_names_of_the_tasks() -> None:
    async def beat(ctx: Context) -> None: ...

    with pytest.raises(ConfigurationError) as caught:
        await trigger(make_app(beat, redis_url=None), "nope")

    assert (
        str(caught.value) == "app ops has no periodic task 'nope'; its periodic tasks: beat, local"
    )


# -- the fleet's records -----------------------------------------------------------------------


@pytest.mark.redis
async def test_recorded_runs_tell_the_last_and_next_run_of_each_fleet_task(redis: Redis) -> None:
    async def beat(ctx: Context) -> None: ...

    app = make_app(beat)
    never = (await recorded_runs(app))["beat"]
    result = await trigger(app, "beat")
    recorded = await recorded_runs(app)

    assert (never.last, never.next) == (None, None)
    assert set(recorded) == {"beat"}  # `local` has fleet=False: no records
    last = recorded["beat"].last
    assert last is not None
    assert (last.tick, last.outcome) == (result.tick.scheduled_at, "ok")
    assert recorded["beat"].next == app.schedules[0].schedule.next_after(result.tick.scheduled_at)


# -- send --------------------------------------------------------------------------------------


JSON_TYPE = [("content-type", b"application/json")]


@pytest.mark.parametrize(
    ("text", "raw", "payload", "headers"),
    [
        ('{"id": 1, "note": "é"}', False, b'{"id":1,"note":"\\u00e9"}', JSON_TYPE),
        ("42", False, b"42", JSON_TYPE),
        ("null", False, b"null", JSON_TYPE),
        ('"quoted"', False, b"quoted", []),
        ("plain text", False, b"plain text", []),
        ("NaN", False, b"NaN", []),
        ('{"id": 1}', True, b'{"id": 1}', []),
    ],
)
def test_a_value_is_sent_as_the_app_would_publish_it(
    text: str, raw: bool, payload: bytes, headers: list[tuple[str, bytes]]
) -> None:
    assert record_from_text(App("ops"), text, raw=raw) == (payload, tuple(headers))


def test_a_value_is_sent_through_the_apps_codec_with_its_content_type() -> None:
    app = App("ops", codec=MsgpackCodec())
    given = [("source", b"cli"), ("content-type", b"text/plain")]

    sent = record_from_text(app, '{"id": 1}', headers=given)
    as_json = record_from_text(app, "null", content_type="Application/JSON")

    assert sent == (
        b"\x81\xa2id\x01",
        (("source", b"cli"), ("content-type", b"application/msgpack")),
    )
    assert as_json == (b"null", (("content-type", b"application/json"),))


def test_json_nested_deeper_than_python_reads_is_sent_as_text() -> None:
    deep = "[" * 100_000 + "]" * 100_000

    assert record_from_text(App("ops"), deep) == (deep.encode(), ())


def test_a_value_whose_bytes_are_not_utf8_is_sent_as_given_only_with_raw() -> None:
    text = b'{"id": 1, "note": "\xff"}'.decode("utf-8", "surrogateescape")  # as argv holds it

    assert record_from_text(App("ops"), text, raw=True) == (b'{"id": 1, "note": "\xff"}', ())
    with pytest.raises(ConfigurationError, match=r"VALUE is not UTF-8 text .* --raw"):
        record_from_text(App("ops"), text)


def test_raw_bytes_with_a_content_type_are_sent_as_given_labelled_with_it() -> None:
    app = App("ops")
    packed = b"\x81\xa2id\x01".decode("utf-8", "surrogateescape")  # MessagePack, from stdin
    given = [("source", b"cli"), ("Content-Type", b"text/plain")]

    sent = record_from_text(
        app, packed, raw=True, content_type="application/msgpack", headers=given
    )

    assert sent == (
        b"\x81\xa2id\x01",
        (("source", b"cli"), ("content-type", b"application/msgpack")),
    )


def test_a_content_type_for_a_value_that_is_not_json_is_refused_naming_raw() -> None:
    with pytest.raises(ConfigurationError) as refused:
        record_from_text(App("ops"), "plain text", content_type="application/msgpack")
    assert str(refused.value) == (
        "VALUE is not JSON, so there is nothing to encode as application/msgpack: give it as "
        "JSON, or with --raw to send its bytes as they are, labelled application/msgpack"
    )


def test_a_value_the_apps_codec_cannot_write_is_refused_before_sending() -> None:
    with pytest.raises(PublishError, match="publish an instance of a generated message class"):
        record_from_text(App("ops", codec=ProtobufCodec()), '{"sensor": "s1"}')
    with pytest.raises(ConfigurationError, match="no codec for 'text/csv': it writes"):
        record_from_text(App("ops"), "{}", content_type="text/csv")


async def test_send_refuses_the_memory_broker_which_nobody_else_can_read() -> None:
    with pytest.raises(ConfigurationError, match="memory://, which lives inside one process"):
        await send(App("ops"), "orders", b"{}")


@pytest.mark.parametrize("topic", ["no spaces", "", ".", "..", "orders\n", "x" * 250], ids=repr)
async def test_send_refuses_a_topic_name_a_consumer_could_not_have(topic: str) -> None:
    with pytest.raises(ConfigurationError, match="a topic name uses letters"):
        await send(App("ops", broker="kafka://127.0.0.1:1"), topic, b"{}")
