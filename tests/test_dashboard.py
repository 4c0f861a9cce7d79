"""The operations dashboard served by a running app: its replica, consumers and periodic tasks on
one page, refreshed panels, a SIGKILLed replica shown gone, every value escaped, and a token when
one is set."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from aiohttp import web
from redis.asyncio import Redis

import taskflow
from taskflow import App, Context
from taskflow.dashboard import Dashboard
from taskflow.dashboard.server import RuntimeSources
from taskflow.dashboard.view import Sources
from taskflow.fleet import PUBLISH_INTERVAL
from taskflow.runner import Runtime, open_runtime
from taskflow.stores.connect import REDIS_TIMEOUT, open_stores, redis_client
from taskflow.stores.fleet import SNAPSHOT_TTL, MemoryFleetStore, Snapshot
from taskflow.stores.redis_fleet import RedisFleetStore
from tests._process import AppProcess
from tests._redis import REDIS_URL
from tests._redis_server import RedisServer

WAIT = 15.0


def _app(name: str, redis_url: str = "") -> App:
    app = App(name, broker="memory://?partitions=2", redis_url=redis_url, http_port=0)

    @app.consume("orders")
    async def on_order(order: dict[str, int], ctx: Context) -> None: ...

    @app.every(seconds=1)
    async def beat(ctx: Context) -> None: ...

    return app


def _client(runtime: Runtime) -> httpx.AsyncClient:
    assert runtime.http is not None
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{runtime.http.port}", timeout=WAIT)


async def _page_with(
    client: httpx.AsyncClient, path: str, *texts: str, within: float = WAIT
) -> str:
    async with asyncio.timeout(within):
        while True:
            answer = await client.get(path)
            if answer.status_code == 200 and all(text in answer.text for text in texts):
                return answer.text
            await asyncio.sleep(0.1)


async def test_without_redis_the_page_shows_this_replica_its_partitions_and_tasks() -> None:
    app = _app("solo")
    async with taskflow.running(app) as runtime, _client(runtime) as client:
        page = await _page_with(client, "/", 'data-topic="orders" data-partition="1"', "beat")
        panels = await client.get("/dashboard/panels")
        data = (await client.get("/dashboard/data.json")).json()
        css = await client.get("/dashboard/static/dashboard.css")
        missing = await client.get("/dashboard/static/../http.py")

    assert "<title>solo · taskflow</title>" in page
    assert page.count('class="replica"') == 1
    assert 'data-state="running"' in page
    assert 'data-task="beat"' in page
    assert "<html" not in panels.text
    assert "<main" in page
    assert '<th scope="col">Partition</th>' in panels.text
    assert '<td class="n lag lead" data-label="Lag">' in panels.text
    assert 'id="fleet"' in panels.text
    assert [row["partition"] for row in data["consumers"]] == [0, 1]
    assert data["fleet"][0]["pid"] > 0
    assert css.headers["content-type"].startswith("text/css")
    assert missing.status_code == 404
    assert "default-src 'none'" in panels.headers["content-security-policy"]


@pytest.mark.redis
async def test_with_redis_the_page_shows_the_fleet_and_the_recorded_runs(redis: Redis) -> None:
    app = _app("fleeted", REDIS_URL)
    async with taskflow.running(app) as runtime, _client(runtime) as client:
        await _page_with(client, "/", 'data-state="running"', "outcome ok")
        data = (await client.get("/dashboard/data.json")).json()

    (beat,) = data["schedules"]
    assert beat["last_replica"]
    assert beat["outcome"] == "ok"
    assert beat["next_tick"]
    assert beat["missed"] == 0
    assert data["redis"] == REDIS_URL


IDLE = "tests.apps.idle:app"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rows(page: str) -> dict[str, str]:
    """Each replica row of the page: its name (host:pid) and its state."""
    row = re.compile(r'<tr class="replica[^"]*" data-replica="([^"]+)" data-state="([^"]+)">')
    return dict(row.findall(page))


@pytest.mark.redis
async def test_a_killed_replica_is_shown_gone_once_its_snapshot_expires(redis: Redis) -> None:
    """SIGKILL leaves a replica no chance to say it stopped: its last snapshot expires and the
    standalone dashboard marks it gone, while the replica that stayed up is still running."""
    env = {"TASKFLOW_REDIS_URL": REDIS_URL}
    port = _free_port()
    with (
        AppProcess(IDLE, env=env) as victim,
        AppProcess(IDLE, env=env) as survivor,
        AppProcess(IDLE, "--port", str(port), env=env, command="dashboard") as dashboard,
    ):
        for process in (victim, survivor):
            await asyncio.to_thread(process.wait_for, "running 2 worker", 60)
        await asyncio.to_thread(dashboard.wait_for, "dashboard of app idle on", 60)
        names = {process: f"{socket.gethostname()}:{process.pid}" for process in (victim, survivor)}
        running = [f'data-replica="{name}" data-state="running"' for name in names.values()]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=WAIT) as client:
            await _page_with(client, "/dashboard/panels", *running)
            victim.send(signal.SIGKILL)
            killed = time.monotonic()
            gone = f'data-replica="{names[victim]}" data-state="gone"'
            page = await _page_with(
                client, "/dashboard/panels", gone, within=SNAPSHOT_TTL + PUBLISH_INTERVAL + WAIT
            )
            took = time.monotonic() - killed
        assert await asyncio.to_thread(victim.wait) == -signal.SIGKILL

    print(f"a SIGKILLed replica was shown gone {took:.1f}s after the kill")
    # Not before its last snapshot (published at most PUBLISH_INTERVAL before the kill) expired.
    assert took >= SNAPSHOT_TTL - PUBLISH_INTERVAL - 1
    assert _rows(page) == {names[victim]: "gone", names[survivor]: "running"}


@asynccontextmanager
async def _served(sources: Sources, token: str | None = None) -> AsyncIterator[str]:
    routes = web.Application()
    Dashboard(lambda: sources, token=token).add_routes(routes)
    runner = web.AppRunner(routes)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_what_replicas_report_is_escaped_and_a_gone_replica_is_marked() -> None:
    fleet = MemoryFleetStore("escaped")
    hostile = "<script>alert(1)</script>"
    now = time.time()
    snapshot = Snapshot(hostile, hostile, 7, hostile, "0.1.0", now, now, "running", {})
    await fleet.publish(snapshot, ttl=0.0)  # expired at once: gone
    async with _served(Sources(App("escaped"), fleet=fleet)) as url, httpx.AsyncClient() as client:
        page = (await client.get(url + "/")).text

    assert hostile not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'class="replica gone"' in page
    assert 'data-state="gone"' in page


CORRUPT_SNAPSHOTS = [
    b"[1, 2]",
    b'"running"',
    b"null",
    b"{}",
    b'{"replica": "bad:3:c", "host": "bad", "pid": "three", "started": "yesterday"}',
    b'{"replica": "bad:3:c", "host": "bad", "pid": 3, "instance_id": null, "version": "1", '
    b'"started": 1e300, "published": NaN, "state": "running", "status": []}',
]


@pytest.mark.redis
@pytest.mark.parametrize("corrupt", CORRUPT_SNAPSHOTS)
async def test_a_corrupt_snapshot_in_redis_is_left_out_and_the_rest_of_the_fleet_shown(
    redis: Redis, corrupt: bytes
) -> None:
    now = time.time()
    healthy = Snapshot("ok:2:b", "ok", 2, None, "0.1.0", now - 10, now, "running", {})
    async with redis_client(REDIS_URL) as client:
        assert client is not None
        fleet = RedisFleetStore(client, "corrupt")
        await fleet.publish(healthy)
        await redis.set(fleet.snapshot_key("bad:3:c"), corrupt)
        await redis.hset(fleet.seen_key, "bad:3:c", corrupt)
        await redis.hset(fleet.seen_key, "gone:4:d", corrupt)  # its snapshot expired
        sources = Sources(App("corrupt"), fleet=fleet)
        async with _served(sources) as url, httpx.AsyncClient(base_url=url, timeout=WAIT) as http:
            answers = [await http.get(path) for path in ("/", "/dashboard/panels")]
            data = await http.get("/dashboard/data.json")

    assert [answer.status_code for answer in answers] == [200, 200]
    assert all('data-state="running"' in answer.text for answer in answers)
    assert data.status_code == 200
    assert [replica["replica"] for replica in data.json()["fleet"]] == ["ok:2:b"]


UNREADABLE_STATUSES = {
    "workers not a list": {"workers": "x"},
    "a worker not an object": {"workers": [1]},
    "a partition without its topic": {
        "workers": [{"kind": "consumer", "name": "c", "partitions": [{}]}]
    },
    "a lag not a number": {
        "workers": [
            {
                "kind": "consumer",
                "name": "c",
                "partitions": [{"topic": "t", "partition": 0, "lag": "x"}],
            }
        ]
    },
    "a last run not a time": {
        "workers": [{"kind": "periodic", "name": "beat", "last_run": "soon"}]
    },
}


@pytest.mark.redis
@pytest.mark.parametrize("status", UNREADABLE_STATUSES.values(), ids=UNREADABLE_STATUSES.keys())
async def test_a_replica_whose_status_the_page_cannot_read_is_named_and_the_rest_shown(
    redis: Redis, status: dict[str, Any]
) -> None:
    # A replica of another taskflow version, say, whose /status has another layout.
    now = time.time()
    healthy = Snapshot("ok:2:b", "ok", 2, None, "0.1.0", now - 10, now, "running", {})
    other = Snapshot("bad:3:c", "bad", 3, None, "9.0.0", now - 10, now, "running", status)
    async with redis_client(REDIS_URL) as client:
        assert client is not None
        fleet = RedisFleetStore(client, "layouts")
        await fleet.publish(healthy)
        await fleet.publish(other)
        app = App("layouts")

        @app.every(seconds=1, fleet=False)
        async def beat(ctx: Context) -> None: ...

        sources = Sources(app, fleet=fleet)
        async with _served(sources) as url, httpx.AsyncClient(base_url=url, timeout=WAIT) as http:
            answers = [await http.get(path) for path in ("/", "/dashboard/panels")]
            data = await http.get("/dashboard/data.json")

    assert [answer.status_code for answer in answers] == [200, 200]
    assert data.status_code == 200
    assert [replica["replica"] for replica in data.json()["fleet"]] == ["ok:2:b"]
    (problem,) = data.json()["problems"]
    assert problem.startswith(
        "replica bad:3 (taskflow 9.0.0) is not shown: its status cannot be read here: "
    )
    assert "replica bad:3 (taskflow 9.0.0) is not shown" in answers[1].text


@pytest.mark.redis
async def test_a_redis_that_hangs_costs_the_page_one_timeout_whatever_the_number_of_tasks() -> None:
    app = App("hung")
    tasks = [f"tick{n}" for n in range(6)]
    for name in tasks:

        async def tick(ctx: Context) -> None: ...

        app.every(seconds=60, name=name)(tick)
    with RedisServer() as server:
        async with open_stores(app.name, server.url) as stores:
            assert stores.client is not None
            fleet = RedisFleetStore(stores.client, app.name)
            sources = Sources(app, fleet=fleet, schedules=stores.schedules)
            # Waiting REDIS_TIMEOUT for each task's runs would outlast the client's timeout.
            timeout = 3 * REDIS_TIMEOUT
            async with _served(sources) as url, httpx.AsyncClient(timeout=timeout) as client:
                server.pause()
                try:
                    answer = await client.get(url + "/dashboard/data.json")
                finally:
                    server.resume()

    assert answer.status_code == 200
    fleet_problem, runs_problem = answer.json()["problems"]
    assert fleet_problem.startswith("the fleet could not be read")
    assert runs_problem.startswith(f"the runs of {', '.join(tasks)} were not read: ")
    assert "Timeout" in runs_problem


async def test_with_a_token_nothing_is_served_without_it() -> None:
    sources = Sources(App("guarded"), fleet=MemoryFleetStore("guarded"))
    async with _served(sources, token="s3cret") as url, httpx.AsyncClient(base_url=url) as client:
        refused = await client.get("/")
        refused_data = await client.get("/dashboard/data.json")
        wrong = await client.get("/dashboard/data.json", headers={"Authorization": "Bearer x"})
        bearer = await client.get(
            "/dashboard/data.json", headers={"Authorization": "Bearer s3cret"}
        )
        signed_in = await client.get("/?token=s3cret")
        with_cookie = await client.get("/dashboard/panels")

    assert refused.status_code == refused_data.status_code == wrong.status_code == 401
    assert "TASKFLOW_DASHBOARD_TOKEN" in refused.text
    assert bearer.status_code == 200
    assert bearer.json()["app"] == "guarded"
    assert signed_in.status_code == 303
    assert signed_in.headers["location"] == "/"
    assert "s3cret" not in signed_in.headers["set-cookie"]
    assert with_cookie.status_code == 200
    assert 'id="fleet"' in with_cookie.text


async def test_the_bearer_scheme_is_read_in_any_case() -> None:
    sources = Sources(App("guarded"), fleet=MemoryFleetStore("guarded"))
    async with _served(sources, token="s3cret") as url, httpx.AsyncClient(base_url=url) as client:
        answers = [
            await client.get("/dashboard/data.json", headers={"Authorization": f"{scheme} s3cret"})
            for scheme in ("bearer", "BEARER", "Bearer")
        ]

    assert [answer.status_code for answer in answers] == [200, 200, 200]


async def test_a_token_or_cookie_that_is_not_utf8_is_refused_like_a_wrong_one() -> None:
    sources = Sources(App("guarded"), fleet=MemoryFleetStore("guarded"))
    async with _served(sources, token="s3cret") as url, httpx.AsyncClient(base_url=url) as client:
        bearer = await client.get("/", headers={b"Authorization": b"Bearer \xff\xfe"})
        cookie = await client.get("/", headers={b"Cookie": b"taskflow_dashboard=\xff\xfe"})

    assert bearer.status_code == cookie.status_code == 401
    assert "TASKFLOW_DASHBOARD_TOKEN" in bearer.text


async def test_the_replay_command_names_the_app_only_when_a_command_started_it() -> None:
    app = _app("referenced")
    async with taskflow.running(app) as runtime:
        unnamed = RuntimeSources(app, lambda: runtime)()
    async with open_runtime(app, app_ref="shop.workers:app") as runtime:
        named = RuntimeSources(app, lambda: runtime)()

    assert unnamed.app_ref == "MODULE:APP"  # run from code: the placeholder
    assert named.app_ref == "shop.workers:app"
