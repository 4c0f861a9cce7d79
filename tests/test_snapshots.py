"""Each replica publishes its status to Redis while it runs, says when it drains, and withdraws
its snapshot on a clean stop; a Redis that stops answering is logged once."""

from __future__ import annotations

import asyncio
import logging
import os
import socket

import pytest
from redis.asyncio import Redis

import taskflow
from taskflow import App, Context
from taskflow.fleet import SnapshotPublisher, Snapshots
from taskflow.stores.fleet import FleetMember
from taskflow.stores.redis_fleet import RedisFleetStore
from tests._redis import REDIS_URL

pytestmark = pytest.mark.redis


async def fleet_of(redis: Redis, app: str) -> list[FleetMember]:
    return await RedisFleetStore(redis, app).members()


async def wait_for_state(redis: Redis, app: str, state: str) -> FleetMember:
    async with asyncio.timeout(15):
        while True:
            members = await fleet_of(redis, app)
            if members and members[0].snapshot.state == state:
                return members[0]
            await asyncio.sleep(0.05)


async def test_a_running_replica_publishes_its_status_then_drains_and_withdraws(
    redis: Redis,
) -> None:
    app = App("snapped", broker="memory://?partitions=2", redis_url=REDIS_URL)
    holding = asyncio.Event()

    @app.consume("jobs")
    async def on_job(job: dict[str, int], ctx: Context) -> None:
        holding.set()
        await ctx.stopping.wait()
        await asyncio.sleep(0.5)  # still draining for a while after the stop request

    async with taskflow.running(app) as runtime:
        running = await wait_for_state(redis, "snapped", "running")
        await app.publish("jobs", {"id": 1})
        await asyncio.wait_for(holding.wait(), 10)
        runtime.manager.request_stop("test")
        draining = await wait_for_state(redis, "snapped", "draining")
    members = await fleet_of(redis, "snapped")

    me = running.snapshot
    assert (me.host, me.pid, me.version) == (
        socket.gethostname(),
        os.getpid(),
        taskflow.__version__,
    )
    assert not running.gone
    assert [w["name"] for w in me.status["workers"]] == ["on_job"]
    assert not draining.gone
    assert [(m.snapshot.replica, m.gone, m.snapshot.state) for m in members] == [
        (me.replica, True, "stopped")
    ]


async def test_without_redis_nothing_is_published(redis: Redis) -> None:
    async with taskflow.running(App("unsnapped", broker="memory://", redis_url="")):
        await asyncio.sleep(0.1)
    assert await redis.keys("taskflow:*") == []


async def test_a_redis_that_does_not_answer_is_logged_once_until_it_answers_again(
    redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    app = App("outage", broker="memory://", redis_url=REDIS_URL)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    down = Redis(port=closed, socket_connect_timeout=0.2)
    async with taskflow.running(app) as runtime:
        publisher = SnapshotPublisher(Snapshots(runtime), RedisFleetStore(down, "outage"))
        with caplog.at_level(logging.INFO, logger="taskflow.fleet"):
            await publisher.publish_once()
            await publisher.publish_once()
            publisher.store = RedisFleetStore(redis, "outage")
            await publisher.publish_once()
    await down.aclose()

    lines = [r.getMessage() for r in caplog.records if r.name == "taskflow.fleet"]
    assert len(lines) == 2, lines
    assert lines[0].startswith("fleet snapshot not published, trying again")
    assert lines[1] == "fleet snapshot published again"
    assert publisher.published == 1


async def test_a_test_client_run_is_no_replica_of_the_fleet(redis: Redis) -> None:
    from taskflow.testing import TestClient

    async with TestClient(App("tested", redis_url=REDIS_URL)):
        await asyncio.sleep(0.1)
    assert await fleet_of(redis, "tested") == []
