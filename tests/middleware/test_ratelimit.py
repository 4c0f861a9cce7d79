"""Rate limits as users see them: the rate holds, there is no burst after idle, partitions pause
while waiting, nothing is lost, two replicas share a global limit, and bad settings are refused."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from taskflow import App, Backoff, ConfigurationError, Context, Message
from taskflow.context import WorkerLogger
from taskflow.message import TopicPartition
from taskflow.middleware.ratelimit import (
    GCRA_SCRIPT,
    TOLERANCE,
    GlobalRateLimit,
    LocalRateLimit,
    rate_limit_key,
)
from taskflow.testing import TestClient
from taskflow.workers import ConsumerWorker
from tests._process import AppProcess, count_lines, wait_until
from tests._redis import REDIS_URL

RATE = 50


def recording_app(name: str, **options: object) -> tuple[App, list[tuple[float, int]]]:
    """An app whose consumer `on_event` of topic `events` records (monotonic time, value)."""
    app = App(name, redis_url=options.pop("redis_url", ""))
    handled: list[tuple[float, int]] = []

    async def on_event(message: Message) -> None:
        handled.append((time.monotonic(), int(message.value)))

    app.add_consumer(on_event, "events", **options)  # type: ignore[arg-type]
    return app, handled


def rate_of(times: list[float]) -> float:
    """Runs per second between the first and the last of `times`."""
    return (len(times) - 1) / (times[-1] - times[0])


def worker_of(client: TestClient) -> ConsumerWorker:
    worker = client.runtime.worker("on_event")
    assert isinstance(worker, ConsumerWorker)
    return worker


# -- local -----------------------------------------------------------------------------------


async def test_a_local_limit_holds_its_rate() -> None:
    app, handled = recording_app("local-rate", rate_limit=f"{RATE}/s")
    async with TestClient(app) as client:
        for i in range(151):  # about 3 s at 50/s
            await client.publish("events", i)
        await client.drain(timeout=10)
    assert sorted(value for _, value in handled) == list(range(151))
    rate = rate_of([t for t, _ in handled])
    print(f"local limit {RATE}/s measured {rate:.2f}/s over 150 runs")
    assert rate == pytest.approx(RATE, rel=0.05)


async def test_after_idle_a_local_limit_does_not_burst() -> None:
    app, handled = recording_app("local-idle", rate_limit=f"{RATE}/s")
    async with TestClient(app) as client:
        for i in range(10):
            await client.publish("events", i)
        await client.drain()
        await asyncio.sleep(1.0)  # the idle period itself: a bucket of 50/s would refill here
        handled.clear()
        for i in range(80):
            await client.publish("events", i)
        await client.drain()
    times = [t for t, _ in handled]
    first_second = sum(1 for t in times if t < times[0] + 1.0)
    # AsyncLimiter(50, 1) lets 100 through in this second; the smooth one lets the rate through,
    # plus at most one run early by TOLERANCE.
    assert first_second <= RATE * (1 + TOLERANCE) + 1
    assert first_second >= RATE * 0.95
    assert len(handled) == 80


async def test_a_waiting_consumer_pauses_its_partition_keeps_polling_and_loses_nothing() -> None:
    app, handled = recording_app("local-backpressure", rate_limit=f"{RATE}/s", max_buffered=10)
    tp = TopicPartition("events", 0)
    samples: list[tuple[frozenset[TopicPartition], float | None]] = []
    async with TestClient(app, partitions=1) as client:
        worker = worker_of(client)
        original = worker.processor.handler

        async def sampled(job: Message, ctx: object) -> None:  # outside the limit: see its effect
            facts = worker.facts()
            samples.append((facts.paused, facts.last_poll))
            await original(job, ctx)  # type: ignore[arg-type]

        worker.processor.handler = sampled
        for i in range(100):  # about 2 s at 50/s
            await client.publish("events", i)
        await client.drain(timeout=10)
        limiter = original
        assert worker.facts().paused == frozenset()  # resumed once drained
    assert [value for _, value in handled] == list(range(100))  # in order, none lost, no double
    assert client.committed("local-backpressure", "events", 0) == 100
    polls_while_paused = {poll for paused, poll in samples if paused == {tp}}
    assert len(polls_while_paused) >= 2, "the consumer stopped polling while paused"
    assert sum(1 for paused, _ in samples if paused == {tp}) >= 50  # paused most of the time
    # The wait is recorded on the middleware, for metrics.
    assert isinstance(limiter, LocalRateLimit)
    elapsed = handled[-1][0] - handled[0][0]
    assert limiter.waits >= 95
    assert limiter.waited_seconds == pytest.approx(elapsed, rel=0.1)


# -- global ----------------------------------------------------------------------------------


@pytest.mark.redis
async def test_a_global_limit_is_smooth_and_kept_under_its_key(redis: Redis) -> None:
    script = redis.register_script(GCRA_SCRIPT)
    runs: list[float] = []

    async def handler(job: object, ctx: object) -> None:
        runs.append(time.monotonic())

    key = rate_limit_key("shop", "on_order")
    limit = GlobalRateLimit(handler, script=script, key=key, rate=RATE)  # type: ignore[arg-type]
    ctx = Context(
        App("shop"), "on_order", WorkerLogger(logging.getLogger("t"), "on_order"), asyncio.Event()
    )
    for _ in range(3):
        await limit(None, ctx)  # type: ignore[arg-type]
    await asyncio.sleep(1.0)  # idle: a refilling bucket would now allow a second's worth at once
    runs.clear()
    waits, waited = limit.waits, limit.waited_seconds
    started = time.monotonic()
    for _ in range(5):
        await limit(None, ctx)  # type: ignore[arg-type]
    assert runs[0] - started < 0.01  # the first run after idle goes at once ...
    gaps = [b - a for a, b in itertools.pairwise(runs)]
    assert min(gaps) >= 1 / RATE - TOLERANCE - 0.002  # ... and the rest are spaced, no burst
    assert key == "taskflow:ratelimit:shop:on_order"
    # Forgotten once it means nothing: the next run's time, at most an interval and the tolerance.
    assert 0 < await redis.pttl(key) <= 1000 * (1 / RATE + TOLERANCE) + 1
    assert limit.waits - waits == 4  # each run after the first waited, and it is recorded
    assert limit.waited_seconds - waited == pytest.approx(runs[-1] - runs[0], abs=0.005)


def replica() -> App:
    """One replica for the shared-limit test: publishes its own messages once both are up."""
    count = int(os.environ["RL_COUNT"])
    out = os.open(os.environ["RL_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    app = App("ratelimit-replicas")

    @app.consume("events", rate_limit=f"{RATE}/s", rate_limit_scope="global")
    async def on_event(message: Message) -> None:
        os.write(out, f"{os.getpid()} {time.time():.6f}\n".encode())

    @app.on_startup
    async def publish_when_both_are_up() -> None:
        assert app.redis_url is not None
        client = Redis.from_url(app.redis_url)
        try:
            if await client.incr("replicas-up") == 2:  # the last one up lets both go
                await client.rpush("go", "one", "two")
            assert await client.blpop(["go"], timeout=20) is not None
        finally:
            await client.aclose()
        for i in range(count):
            await app.publish("events", i)

    return app


@pytest.mark.redis
async def test_two_replicas_share_a_global_limit(redis: Redis, tmp_path: Path) -> None:
    out, count = tmp_path / "handled", 80  # 160 runs: about 3.2 s at 50/s together
    env = {"RL_OUT": str(out), "RL_COUNT": str(count)}
    args = ("--broker", "memory://", "--redis", REDIS_URL)
    ref = "tests.middleware.test_ratelimit:replica"
    with AppProcess(ref, *args, env=env) as one, AppProcess(ref, *args, env=env) as two:
        await asyncio.to_thread(wait_until, lambda: count_lines(out) >= 2 * count, 20, "runs")
        assert await asyncio.to_thread(one.stop) == 0
        assert await asyncio.to_thread(two.stop) == 0
    runs: dict[str, list[float]] = {}
    for line in out.read_text().splitlines():
        pid, at = line.split()
        runs.setdefault(pid, []).append(float(at))
    assert sorted(len(times) for times in runs.values()) == [count, count]
    # Only while both run does sharing show: unshared, they would make 100/s together.
    start = max(times[0] for times in runs.values())
    end = min(times[-1] for times in runs.values())
    assert end - start >= 1.5  # GCRA is not fair between replicas: one may finish first
    together = sum(1 for times in runs.values() for t in times if start <= t <= end)
    everything = sorted(t for times in runs.values() for t in times)
    print(
        f"global limit {RATE}/s, 2 replicas: {together / (end - start):.2f}/s over the "
        f"{end - start:.2f}s both ran, {rate_of(everything):.2f}/s over all {len(everything)} runs"
    )
    assert together / (end - start) == pytest.approx(RATE, rel=0.10)
    assert rate_of(everything) == pytest.approx(RATE, rel=0.10)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Flag(logging.Handler):
    """Sets an event when a record at ERROR or above is logged."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.event = asyncio.Event()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
        self.event.set()


@pytest.mark.redis
async def test_a_redis_failure_retries_the_message_until_redis_answers(redis: Redis) -> None:
    app, handled = recording_app(
        "global-outage",
        rate_limit="1000/s",
        rate_limit_scope="global",
        redis_url=REDIS_URL,
        retry=Backoff(initial=0.02, maximum=0.05),
    )
    flag = Flag()
    log = logging.getLogger("taskflow.ratelimit")
    log.addHandler(flag)
    unreachable = Redis(port=closed_port(), retry=Retry(NoBackoff(), 0))
    try:
        async with TestClient(app) as client:
            limit = worker_of(client).processor.handler
            assert isinstance(limit, GlobalRateLimit)
            working = limit.script
            limit.script = unreachable.register_script("return 0")
            await client.publish("events", 1)
            await flag.event.wait()
            await asyncio.sleep(0.2)  # let the error policy retry against the dead Redis a while
            assert handled == []
            assert client.committed("global-outage", "events", 0) is None
            limit.script = working
            await client.drain()
    finally:
        log.removeHandler(flag)
        await unreachable.aclose()
    assert [value for _, value in handled] == [1]  # run once Redis answered, not lost
    assert len(flag.messages) == 1  # one clear line per outage, not one per attempt
    assert "the shared rate limit at taskflow:ratelimit:global-outage:on_event" in flag.messages[0]
    assert "unavailable" in flag.messages[0]


# -- configuration errors --------------------------------------------------------------------


async def test_a_global_limit_without_redis_is_refused_before_anything_starts() -> None:
    app, _ = recording_app("no-redis", rate_limit="5/s", rate_limit_scope="global")
    started: list[bool] = []

    @app.on_startup
    async def note() -> None:
        started.append(True)

    expected = (
        "on_event: rate_limit_scope='global' shares the limit through Redis; "
        "configure one with App(redis_url=...), --redis or TASKFLOW_REDIS_URL"
    )
    with pytest.raises(ConfigurationError) as caught:
        async with TestClient(app):
            pass
    assert str(caught.value) == expected
    assert started == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rate_limit": "fast"}, "unknown rate limit 'fast': write '100/s', '30/m' or '1000/h'"),
        ({"rate_limit": "100/d"}, "unknown rate limit '100/d'"),
        ({"rate_limit": "0/s"}, "a rate limit count must be positive, got 0.0"),
        (
            {"rate_limit": "5/s", "rate_limit_scope": "cluster"},
            "rate_limit_scope is 'local' or 'global', got 'cluster'",
        ),
        ({"rate_limit_scope": "global"}, "rate_limit_scope='global' needs a rate_limit= to share"),
    ],
)
def test_bad_rate_limits_are_refused_at_registration(
    options: dict[str, object], message: str
) -> None:
    app = App("bad-limits", redis_url="")

    async def on_event(message: Message) -> None: ...

    with pytest.raises(ConfigurationError) as caught:
        app.add_consumer(on_event, "events", **options)  # type: ignore[arg-type]
    assert str(caught.value).startswith(message)
    assert app.consumers == []


async def test_shutdown_does_not_wait_for_a_slow_limit() -> None:
    app = App("slow-limit")
    handled: list[int] = []

    @app.consume("orders", rate_limit="1/m")
    async def on_order(message: Message) -> None:
        handled.append(message.offset)

    async with TestClient(app, partitions=1) as client:
        await client.publish("orders", b"first")
        await client.publish("orders", b"second")  # its turn would come a minute later
        while client.committed("slow-limit", "orders", 0) != 1:
            await client.broker.wait_for_commit()
    assert handled == [0]
    assert client.report is not None
    assert client.report.clean  # no cancellation: the waiting message was deferred
    assert client.committed("slow-limit", "orders", 0) == 1  # the second comes again later
