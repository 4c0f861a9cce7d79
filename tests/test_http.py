"""The operations endpoint, over real HTTP: /healthz, /readyz, /metrics and /status.

In-process tests run the app with `TestClient` or `open_runtime()` and talk to its port with
httpx; the last ones start `taskflow run` as a real process and stop it with SIGTERM.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import REGISTRY, generate_latest

from taskflow import App, ConfigurationError
from taskflow.brokers.memory import MemoryBroker
from taskflow.http import EndpointState, OperationsEndpoint
from taskflow.loopwatch import LoopWatch
from taskflow.runner import Runtime, open_runtime
from taskflow.testing import ManualClock, TestClient
from taskflow.types import WorkerStatus
from tests._process import AppProcess

WAIT = 5.0  # the longest any in-process condition may take to come true


def _base(runtime: Runtime) -> str:
    assert runtime.http is not None, "the app has no http_port"
    return f"http://127.0.0.1:{runtime.http.port}"


@asynccontextmanager
async def _client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=_base(runtime), timeout=WAIT) as client:
        yield client


async def _until(
    client: httpx.AsyncClient, path: str, wanted: Callable[[httpx.Response], bool]
) -> httpx.Response:
    """GET `path` until the answer is `wanted` (nothing signals a probe's change; bounded)."""
    deadline = time.monotonic() + WAIT
    while True:
        response = await client.get(path)
        if wanted(response):
            return response
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} still answers {response.status_code} {response.text}")
        await asyncio.sleep(0.02)


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name` whose labels include `labels`, in Prometheus text."""
    for line in text.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
        if match and all(f'{k}="{v}"' in match[1] for k, v in labels.items()):
            return float(match[2])
    raise AssertionError(f"no {name} with {labels} in:\n{text}")


# -- the four endpoints ----------------------------------------------------------------------


async def test_the_endpoints_answer_over_http() -> None:
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    app = App("ops", http_port=0, clock=clock)

    @app.consume("orders")
    async def on_order(order: dict[str, int]) -> None:
        """Handles it at once."""

    @app.every(minutes=5)
    async def sweep() -> None:
        """Runs when the test moves the clock."""

    async with TestClient(app, partitions=2) as tc, _client(tc.runtime) as http:
        await tc.publish("orders", {"id": 1}, key="k")
        await tc.drain()
        await clock.advance_to_next()

        health = await http.get("/healthz")
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        assert health.json()["reasons"] == []

        ready = await http.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready", "reasons": []})

        status = (await http.get("/status")).json()
        assert (status["app"], status["state"]) == ("ops", "running")
        consumer, periodic = status["workers"]
        assert consumer["name"] == "on_order"
        assert consumer["kind"] == "consumer"
        assert consumer["state"] == "running"
        assert consumer["restarts"] == 0
        assert consumer["topics"] == ["orders"]
        assert consumer["group"] == "ops"
        assert consumer["in_flight"] == 0
        assert [(p["topic"], p["partition"]) for p in consumer["partitions"]] == [
            ("orders", 0),
            ("orders", 1),
        ]
        handled = [p for p in consumer["partitions"] if p["committed"] is not None]
        assert [(p["committed"], p["high_watermark"], p["lag"]) for p in handled] == [(1, 1, 0)]
        assert consumer["lag"] == 0
        assert periodic == {
            "name": "sweep",
            "kind": "periodic",
            "state": "running",
            "restarts": 0,
            "last_error": None,
            "schedule": "every 5m",
            "last_run": "2026-01-01T00:05:00+00:00",
            "next_run": "2026-01-01T00:10:00+00:00",
            "in_flight": 0,
            "runs": 1,
            "failures": 0,
            "skipped": 0,
        }

        metrics = await http.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        consumed = _sample(
            metrics.text,
            "messaging_client_consumed_messages_total",
            messaging_destination_name="orders",
            messaging_consumer_group_name="ops",
        )
        assert consumed == 1.0
        assert _sample(metrics.text, "target_info", service_name="ops") == 1.0
        runs = _sample(metrics.text, "taskflow_periodic_runs_total", taskflow_periodic_task="sweep")
        assert runs == 1.0


async def test_status_counts_a_periodic_run_in_flight() -> None:
    clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
    app = App("ops-periodic", http_port=0, clock=clock)
    running_now, release = asyncio.Event(), asyncio.Event()

    @app.every(minutes=1)
    async def report() -> None:
        running_now.set()
        await release.wait()

    async with TestClient(app) as tc, _client(tc.runtime) as http:
        await clock.advance_to_next()
        await running_now.wait()
        (worker,) = (await http.get("/status")).json()["workers"]
        assert (worker["in_flight"], worker["runs"]) == (1, 0)
        release.set()
        await _until(http, "/status", lambda r: r.json()["workers"][0]["runs"] == 1)


class _Quiet:
    """A custom worker without a status()."""

    name = "quiet"

    def __init__(self) -> None:
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        await self._stopping.wait()

    async def stop(self) -> None:
        self._stopping.set()


class _Counting(_Quiet):
    """A custom worker that says how it is."""

    name = "counting"

    def status(self) -> WorkerStatus:
        return WorkerStatus(kind="counter", activity="counting", details={"counted": 3})


async def test_status_shows_what_a_custom_worker_says_of_itself() -> None:
    app = App("ops-custom", http_port=0)
    app.add_worker(_Counting())
    app.add_worker(_Quiet())

    async with TestClient(app) as tc, _client(tc.runtime) as http:
        status = await _until(
            http, "/status", lambda r: {w["state"] for w in r.json()["workers"]} == {"running"}
        )
        counting, quiet = status.json()["workers"]
        assert counting == {
            "name": "counting",
            "kind": "counter",
            "state": "running",
            "restarts": 0,
            "last_error": None,
            "activity": "counting",
            "counted": 3,
        }
        assert (quiet["name"], quiet["kind"], quiet["state"]) == ("quiet", "worker", "running")
        assert "activity" not in quiet


async def test_readyz_names_what_is_not_ready() -> None:
    broker = MemoryBroker(partitions=1)
    peer, app = App("unready", http_port=0), App("unready", http_port=0)

    @peer.consume("solo", group="pair")
    async def first(payload: bytes) -> None:
        """Another replica's member of the group, which gets the only partition."""

    @app.consume("solo", group="pair")
    async def second(payload: bytes) -> None:
        """This replica's member: it joins second, and gets nothing."""

    async with open_runtime(peer, broker=broker) as other, _client(other) as other_http:
        other_run = asyncio.create_task(other.manager.run())
        await _until(other_http, "/readyz", lambda r: r.status_code == 200)
        async with open_runtime(app, broker=broker) as runtime, _client(runtime) as http:
            before = await http.get("/readyz")
            assert before.status_code == 503
            assert before.json() == {
                "status": "not ready",
                "reasons": ["worker second is stopped"],
            }
            assert (await http.get("/status")).json()["state"] == "starting"

            run = asyncio.create_task(runtime.manager.run())
            settled = await _until(
                http, "/readyz", lambda r: not any(" is " in why for why in r.json()["reasons"])
            )
            assert settled.status_code == 503
            assert settled.json()["reasons"] == ["consumer second has no partitions assigned"]

            runtime.manager.request_stop("test")
            assert (await run).clean
        other.manager.request_stop("test")
        assert (await other_run).clean


# -- shutdown ----------------------------------------------------------------------------------


class Witness:
    """A worker that notes, when asked to stop, what the operations endpoint was doing."""

    name = "witness"

    def __init__(self) -> None:
        self.http: OperationsEndpoint | None = None
        self.seen: EndpointState | None = None
        self.stopped = asyncio.Event()

    async def start(self) -> None:
        await self.stopped.wait()

    async def stop(self) -> None:
        assert self.http is not None
        self.seen = self.http.state
        self.stopped.set()


async def test_readyz_turns_503_first_and_the_door_closes_before_workers_stop() -> None:
    app = App("draining", http_port=0)
    started, release = asyncio.Event(), asyncio.Event()

    @app.consume("jobs")
    async def on_job(job: dict[str, int]) -> None:
        started.set()
        await release.wait()

    witness = app.add_worker(Witness())
    assert isinstance(witness, Witness)

    async with open_runtime(app) as runtime, _client(runtime) as http:
        witness.http = runtime.http
        run = asyncio.create_task(runtime.manager.run())
        await _until(http, "/readyz", lambda r: r.status_code == 200)
        await app.publish("jobs", {"id": 1})
        await started.wait()

        runtime.manager.request_stop("test")
        # Before the Manager has even begun its shutdown, on the connection already open:
        ready = await http.get("/readyz")
        assert (ready.status_code, ready.json()) == (
            503,
            {"status": "not ready", "reasons": ["shutting down"]},
        )

        await witness.stopped.wait()  # the first worker asked to stop (the last registered)
        assert witness.seen is EndpointState.DRAINING
        async with httpx.AsyncClient(base_url=_base(runtime)) as newcomer:
            with pytest.raises(httpx.ConnectError):
                await newcomer.get("/readyz")

        # The handler still runs: the open connection is still answered.
        assert not run.done()
        assert (await http.get("/readyz")).status_code == 503
        assert (await http.get("/healthz")).status_code == 200
        status = (await http.get("/status")).json()
        assert status["state"] == "stopping"
        assert status["workers"][0]["in_flight"] == 1

        release.set()
        assert (await run).clean


# -- liveness ----------------------------------------------------------------------------------


def test_the_loop_watch_reports_a_block_for_a_while() -> None:
    monitor = LoopWatch(limit=1.0, memory=10.0)
    monitor.note(0.002, now=100.0)
    assert monitor.problem(100.0) is None
    monitor.note(1.5, now=101.0)
    assert monitor.problem(105.0) == "the event loop was blocked for 1.50s, 4.0s ago"
    monitor.note(0.001, now=105.1)
    assert monitor.problem(110.9) is not None
    assert monitor.problem(111.1) is None


async def test_healthz_fails_after_the_event_loop_was_blocked() -> None:
    app = App("blocked", http_port=0)
    async with TestClient(app) as tc, _client(tc.runtime) as http:
        assert tc.runtime.http is not None
        tc.runtime.http.monitor.limit = 0.2
        assert (await http.get("/healthz")).status_code == 200

        time.sleep(0.3)  # noqa: ASYNC251 - what a sync call in an async handler does

        health = await http.get("/healthz")
        assert health.status_code == 503
        (reason,) = health.json()["reasons"]
        assert reason.startswith("the event loop was blocked for 0.")


async def test_healthz_fails_while_a_handler_is_stuck_past_its_timeout() -> None:
    app = App("stuck", http_port=0)
    release = asyncio.Event()

    @app.consume("jobs", timeout=0.1)
    async def on_job(job: dict[str, int]) -> None:
        try:
            await release.wait()
        except asyncio.CancelledError:  # the bug under test: a handler that will not stop
            await release.wait()

    async with TestClient(app, partitions=1) as tc, _client(tc.runtime) as http:
        assert tc.runtime.http is not None
        assert tc.runtime.watchdog is not None
        tc.runtime.watchdog.grace = 0.1
        await tc.publish("jobs", {"id": 1})

        health = await _until(http, "/healthz", lambda r: r.status_code == 503)
        (reason,) = health.json()["reasons"]
        assert re.fullmatch(
            r"on_job: the handler for jobs\[0\]@0 has run for \d+\.\ds, past its timeout of 0\.1s",
            reason,
        )

        release.set()
        await tc.drain()
        assert (await http.get("/healthz")).status_code == 200


# -- metrics -----------------------------------------------------------------------------------


async def test_each_app_gets_a_private_prometheus_registry() -> None:
    apps = [App("left", http_port=0), App("right", http_port=0)]
    for app in apps:

        @app.consume("orders")
        async def on_order(order: dict[str, int]) -> None:
            """Counted in its own app's metrics only."""

    async with TestClient(apps[0]) as left, TestClient(apps[1]) as right:
        await left.publish("orders", {"id": 1})
        await left.drain()
        async with _client(left.runtime) as http:
            left_text = (await http.get("/metrics")).text
        async with _client(right.runtime) as http:
            right_text = (await http.get("/metrics")).text

    assert _sample(left_text, "messaging_client_consumed_messages_total") == 1.0
    assert "messaging_client_consumed_messages_total" not in right_text
    assert 'service_name="right"' in right_text
    assert "messaging_client" not in generate_latest(REGISTRY).decode()


async def test_a_users_own_meter_provider_is_served_from_the_default_registry() -> None:
    # The reader registers itself on prometheus_client's default REGISTRY.
    provider = MeterProvider([PrometheusMetricReader()])
    try:
        app = App("own-provider", http_port=0, meter_provider=provider)

        @app.consume("orders")
        async def on_order(order: dict[str, int]) -> None:
            """Counted by the user's provider."""

        async with TestClient(app) as tc, _client(tc.runtime) as http:
            assert tc.runtime.http is not None
            assert tc.runtime.http.registry is REGISTRY
            assert tc.runtime.http.meter_provider is provider
            await tc.publish("orders", {"id": 1})
            await tc.drain()
            text = (await http.get("/metrics")).text
        assert _sample(text, "messaging_client_consumed_messages_total") == 1.0
    finally:
        provider.shutdown()


# -- configuration -----------------------------------------------------------------------------


def _listening() -> socket.socket:
    """A socket listening on a free port, as another program would hold it."""
    blocker = socket.socket()
    blocker.bind(("0.0.0.0", 0))
    blocker.listen()
    return blocker


@contextmanager
def _taken_port() -> Iterator[int]:
    with _listening() as blocker:
        yield int(blocker.getsockname()[1])


async def test_a_taken_port_stops_the_app_before_anything_starts() -> None:
    with _taken_port() as port:
        app = App("taken", http_port=port)
        started: list[bool] = []

        @app.on_startup
        async def note() -> None:
            started.append(True)

        with pytest.raises(ConfigurationError, match=rf"operations endpoint on 0\.0\.0\.0:{port}"):
            async with open_runtime(app):
                pass
    assert started == []


@pytest.mark.parametrize("port", [-1, 65536, 8080.0, True, "8080"])
def test_a_bad_http_port_is_refused(port: Any) -> None:
    with pytest.raises(ConfigurationError, match="http_port must be a port number from 0 to"):
        App("bad-port", http_port=port)


def test_the_port_comes_from_the_environment_over_the_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKFLOW_HTTP_PORT", "9100")
    assert App("env-port").http_port == 9100
    assert App("code-port", http_port=9200).http_port == 9100
    monkeypatch.setenv("TASKFLOW_HTTP_PORT", "")
    assert App("no-port").http_port is None
    monkeypatch.setenv("TASKFLOW_HTTP_PORT", "nine")
    with pytest.raises(ConfigurationError, match="TASKFLOW_HTTP_PORT must be a port number"):
        App("bad-env-port")


def test_without_a_port_there_is_no_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TASKFLOW_HTTP_PORT", raising=False)

    async def check() -> None:
        async with open_runtime(App("quiet")) as runtime:
            assert runtime.http is None

    asyncio.run(check())


# -- taskflow run ------------------------------------------------------------------------------

ENDPOINT = r"operations endpoint on http://0\.0\.0\.0:(\d+) "


def _port(process: AppProcess) -> int:
    match = re.search(ENDPOINT, process.wait_for(ENDPOINT))
    assert match is not None
    return int(match[1])


def test_readyz_is_503_while_taskflow_run_drains_after_sigterm() -> None:
    with AppProcess("tests.apps.http_slow:app", "--http-port", "0") as app:
        url = f"http://127.0.0.1:{_port(app)}"
        app.wait_for("handling job 1")
        with httpx.Client(base_url=url, timeout=WAIT) as http:  # one kept-alive connection
            ready = http.get("/readyz")
            assert (ready.status_code, ready.json()["status"]) == (200, "ready")
            (worker,) = http.get("/status").json()["workers"]
            assert (worker["name"], worker["in_flight"]) == ("on_job", 1)

            app.send(signal.SIGTERM)
            app.wait_for("operations endpoint: no longer accepting connections")
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{url}/readyz", timeout=WAIT)
            draining = http.get("/readyz")
            assert (draining.status_code, draining.json()) == (
                503,
                {"status": "not ready", "reasons": ["shutting down"]},
            )
            assert http.get("/healthz").status_code == 200

            app.send(signal.SIGUSR1)  # the handler finishes
            assert app.wait() == 0
    log = app.log
    assert log.index("no longer accepting") < log.index("finished job 1")
    assert log.index("finished job 1") < log.index("stopped consuming")


def test_the_flag_wins_over_the_environment() -> None:
    with (
        _taken_port() as taken,
        AppProcess(
            "tests.apps.idle:app", "--http-port", "0", env={"TASKFLOW_HTTP_PORT": str(taken)}
        ) as app,
    ):
        port = _port(app)
        assert port != taken
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=WAIT).status_code == 200
        assert app.stop() == 0


def test_the_environment_alone_turns_the_endpoint_on() -> None:
    with AppProcess("tests.apps.idle:app", env={"TASKFLOW_HTTP_PORT": "0"}) as app:
        port = _port(app)
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=WAIT).status_code == 200
        assert app.stop() == 0


def test_a_taken_port_is_a_usage_error() -> None:
    with (
        _taken_port() as taken,
        AppProcess("tests.apps.idle:app", "--http-port", str(taken)) as app,
    ):
        assert app.wait() == 2
    assert f"Error: cannot serve the operations endpoint on 0.0.0.0:{taken}" in app.log
    assert "consuming silence as group listeners" not in app.log


def test_an_out_of_range_port_is_a_usage_error() -> None:
    with AppProcess("tests.apps.idle:app", "--http-port", "70000") as app:
        assert app.wait() == 2
    assert "Error: --http-port must be a port number from 0 to 65535, got '70000'" in app.log
