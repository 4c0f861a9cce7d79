"""The runner: what it opens before workers start, and what it refuses."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import socket

import pytest

import taskflow
from taskflow import (
    App,
    ConfigurationError,
    Context,
    StateError,
    StoreError,
    TopicPartition,
    WorkerState,
)
from taskflow.brokers.memory import MemoryBroker
from taskflow.runner import consumer_options, group_instance_id, open_runtime, running
from tests._redis import REDIS_URL


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_an_unreachable_redis_is_refused_before_any_worker_starts() -> None:
    app = App("needs-redis", redis_url=f"redis://:s3cret@127.0.0.1:{closed_port()}/0")
    started = []

    @app.on_startup
    async def note() -> None:
        started.append(True)

    with pytest.raises(StoreError, match=r"cannot reach Redis at redis://:\*\*\*@127\.0\.0\.1"):
        async with running(app):
            pass
    assert started == []  # not even the startup hooks ran


async def test_a_malformed_redis_url_is_a_configuration_error() -> None:
    app = App("bad-redis", redis_url="http://127.0.0.1:6379")
    with pytest.raises(ConfigurationError, match="redis_url must be a redis://"):
        async with running(app):
            pass


@pytest.mark.redis
async def test_a_configured_redis_is_open_while_the_app_runs() -> None:
    app = App("with-redis", redis_url=REDIS_URL)
    async with running(app) as runtime:
        assert runtime.redis is not None
        assert await runtime.redis.ping()


async def test_no_redis_url_means_no_redis() -> None:
    async with running(App("no-redis", redis_url="")) as runtime:
        assert runtime.redis is None


# -- taskflow.running: inside a program that owns the loop and the process -------------------


async def test_running_runs_the_workers_in_the_background_and_drains_them_on_exit() -> None:
    app = App("embedded", broker="memory://?partitions=1")
    handled: list[int] = []
    holding, finished = asyncio.Event(), asyncio.Event()

    @app.consume("jobs")
    async def on_job(job: dict[str, int], ctx: Context) -> None:
        handled.append(job["id"])
        if job["id"] == 2:  # still running when the block ends: it is let finish
            holding.set()
            await ctx.stopping.wait()
            finished.set()

    sigterm_before = signal.getsignal(signal.SIGTERM)
    frozen_before = gc.get_freeze_count()
    async with taskflow.running(app) as runtime:
        assert signal.getsignal(signal.SIGTERM) == sigterm_before  # the host owns the signals
        await app.publish("jobs", {"id": 1})
        await app.publish("jobs", {"id": 2})
        await asyncio.wait_for(holding.wait(), 10)
    assert handled == [1, 2]
    assert finished.is_set()
    assert runtime.manager.stop_requested
    assert {s.state for s in runtime.manager.statuses.values()} == {WorkerState.STOPPED}
    broker = runtime.broker
    assert isinstance(broker, MemoryBroker)
    assert broker.committed("embedded", TopicPartition("jobs", 0)) == 2
    assert gc.get_freeze_count() == frozen_before  # nothing frozen in someone else's process
    assert not app.running


async def test_running_to_publish_only_starts_no_worker_and_joins_no_group() -> None:
    app = App("publisher", broker="memory://?partitions=1", http_port=0)
    handled: list[bytes] = []
    started: list[bool] = []

    @app.on_startup
    async def note() -> None:
        started.append(True)

    @app.consume("jobs")
    async def on_job(job: bytes) -> None:
        handled.append(job)

    @app.every(seconds=0.01)
    async def tick() -> None:
        handled.append(b"tick")

    async with taskflow.running(app, workers=False) as runtime:
        await app.publish("jobs", b"one")
        await app.publish("jobs", b"two", wait=False)
        await asyncio.sleep(0.05)  # a tick's worth: nothing may run
        broker = runtime.broker
        assert isinstance(broker, MemoryBroker)
        assert broker.end_offset(TopicPartition("jobs", 0)) == 2
        assert broker.group("publisher").members == []
        assert runtime.workers == []
        assert runtime.http is not None
        status = await runtime.http.status()
        assert (status["state"], status["workers"]) == ("running", [])
        assert status["publishing"] == {"pending": 0, "undelivered": 0}
        assert runtime.http.readiness()["status"] == "ready"
    assert handled == []
    assert started == [True]  # the lifespan and startup hooks still run


async def test_running_leaves_the_workers_stopped_when_the_block_raises() -> None:
    app = App("embedded")

    @app.consume("jobs")
    async def on_job(job: bytes) -> None:
        pass

    with pytest.raises(RuntimeError, match="the web app failed"):
        async with taskflow.running(app) as runtime:
            raise RuntimeError("the web app failed")
    assert {s.state for s in runtime.manager.statuses.values()} == {WorkerState.STOPPED}


async def test_a_handler_asking_to_exit_stops_the_workers_but_not_the_host() -> None:
    app = App("embedded")
    said = asyncio.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "stopped while the program goes on" in record.getMessage():
                said.set()

    @app.consume("jobs")
    async def on_job(job: bytes) -> None:
        raise SystemExit(3)

    watch = Watch()
    logging.getLogger("taskflow").addHandler(watch)
    try:
        async with taskflow.running(app) as runtime:
            await app.publish("jobs", b"stop")
            await asyncio.wait_for(said.wait(), 10)
            assert {s.state for s in runtime.manager.statuses.values()} == {WorkerState.STOPPED}
            await app.publish("jobs", b"after")  # the broker stays: the host may still publish
    finally:
        logging.getLogger("taskflow").removeHandler(watch)


async def test_the_manager_taskflow_running_runs_cannot_be_run_a_second_time() -> None:
    app = App("embedded")

    @app.consume("jobs")
    async def on_job(job: bytes) -> None:
        pass

    async with taskflow.running(app) as runtime:
        with pytest.raises(StateError, match=r"use taskflow\.runner\.open_runtime"):
            await runtime.manager.run()


# -- what each consumer asks of the broker ----------------------------------------------------


async def on_order(order: dict) -> None: ...


def test_each_consumer_of_a_replica_is_a_static_member_of_its_own() -> None:
    app = App("billing", instance_id="pod-a")
    app.add_consumer(on_order, "orders", start="latest", consumer_options={"client_id": "x"})
    app.add_consumer(on_order, "orders", name="audit", group="audit")

    first, second = (consumer_options(spec, app.instance_id) for spec in app.consumers)

    assert (first.auto_offset_reset, dict(first.extra)) == ("latest", {"client_id": "x"})
    assert (second.auto_offset_reset, dict(second.extra)) == (None, {})
    assert (first.group_instance_id, second.group_instance_id) == ("pod-a.on_order", "pod-a.audit")
    assert consumer_options(app.consumers[0], None).group_instance_id is None


def test_a_worker_name_kafka_would_not_take_in_an_id_is_written_with_a_hash_of_it() -> None:
    odd = group_instance_id("pod-a", "orders → billing")
    other = group_instance_id("pod-a", "orders → billing!")

    assert odd.startswith("pod-a.orders___billing-")
    assert odd == group_instance_id("pod-a", "orders → billing")  # the same on every restart
    assert odd != other
    assert len(group_instance_id("p" * 100, "w" * 300)) <= 249


async def test_a_registrations_options_that_clash_with_the_brokers_are_refused_before_start() -> (
    None
):
    app = App(
        "billing",
        broker="kafka://127.0.0.1:9",
        broker_options={"session_timeout_ms": 30000, "heartbeat_interval_ms": 5000},
    )
    app.add_consumer(on_order, "orders", consumer_options={"session_timeout_ms": 3000})

    with pytest.raises(ConfigurationError) as caught:
        async with open_runtime(app):
            pass

    assert str(caught.value) == (
        "consumer on_order: Kafka option 'heartbeat_interval_ms' (5000) must be lower than "
        "'session_timeout_ms' (3000), typically a third of it"
    )
