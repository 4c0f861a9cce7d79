"""The operations endpoint: liveness, readiness, metrics and status of a running app, over HTTP.

`App(http_port=...)`, ``--http-port`` or ``TASKFLOW_HTTP_PORT`` turns it on. It is served by
aiohttp's server (`web.AppRunner` and `web.TCPSite`) inside the app's own event loop, with no
signal handlers of its own: the Manager owns SIGINT and SIGTERM.

- ``GET /healthz``: liveness. 503 when the event loop was blocked recently (the run's
  `taskflow.loopwatch.LoopWatch` measures how late its ticks come), or a handler has run past
  its `timeout=` by more than a grace (the `Watchdog` of `taskflow.middleware.timeout` notes
  each timed call).
- ``GET /readyz``: readiness. 503 from the moment a stop is requested, and while any worker is
  not running or any consumer has no partition assigned.
- ``GET /metrics``: the OpenTelemetry metrics in the Prometheus text format. The text is rendered
  in a thread, one render at a time; requests that come while one runs share it, and an answer is
  served again for `METRICS_MAX_AGE` (1 s), so scrapes never hold up the handlers.
- ``GET /status``: every worker as JSON.
- ``GET /asyncapi.json``: the app's AsyncAPI 3.0 document (`taskflow.asyncapi`); ``GET /asyncapi``
  the same as a page.
- ``GET /``: the operations dashboard (`taskflow.dashboard`): the fleet's replicas, consumers,
  periodic tasks and dead letters, read from Redis (without it, this replica alone).

At most `MAX_CONNECTIONS` (64) connections are served at once; one more is answered 503 and
closed, after a second. `App(http_host=...)`, ``--http-host`` or ``TASKFLOW_HTTP_HOST`` chooses
the address (default ``0.0.0.0``, every interface; ``127.0.0.1`` keeps the endpoint inside the
host or pod).

On shutdown /readyz turns 503 as soon as the stop is requested; the listening socket closes before
any worker is asked to stop (connections already open are still answered while workers drain);
the server closes for good once the workers are done.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from taskflow import asyncapi
from taskflow.exceptions import ConfigurationError, StateError
from taskflow.loopwatch import LoopWatch
from taskflow.telemetry.providers import global_meter_is_set
from taskflow.telemetry.snapshot import status_body
from taskflow.telemetry.status import ConsumerStatus
from taskflow.types import WorkerState, status_of

if TYPE_CHECKING:
    from types import TracebackType

    from opentelemetry.sdk.metrics import MeterProvider

    from taskflow.app import App
    from taskflow.manager import Manager
    from taskflow.middleware.timeout import Watchdog
    from taskflow.runner import Runtime

__all__ = ["EndpointState", "MetricsRenderer", "OperationsEndpoint"]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "0.0.0.0"  # probes come from the node, not from inside the pod
MAX_CONNECTIONS = 64  # open connections past this are answered 503 and closed
BUSY_DELAY = 1.0  # seconds before a connection past the limit gets its 503
METRICS_MAX_AGE = 1.0  # seconds a rendered /metrics answer is served again to other requests
SERVER_CLOSE_TIMEOUT = 2.0  # requests still running when the server closes get this long


class EndpointState(enum.Enum):
    """Where the operations endpoint is in its life."""

    UNOPENED = "unopened"
    SERVING = "serving"
    DRAINING = "draining"  # no new connections; open ones are still answered
    CLOSED = "closed"


# -- metrics -------------------------------------------------------------------------------


def _prometheus(app: App) -> tuple[CollectorRegistry, MeterProvider | None]:
    """The registry /metrics serves, and the MeterProvider made for it (None: the user's own).

    Without a configured MeterProvider (on the App or globally) taskflow makes one whose only
    reader is a Prometheus reader on a private registry. A user's own provider cannot be given
    a reader after it is built, so then /metrics serves prometheus_client's default registry,
    where a `PrometheusMetricReader()` the user added puts its metrics.
    """
    if app.meter_provider is not None or global_meter_is_set():
        return REGISTRY, None
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or app.name})
    provider = MeterProvider(
        metric_readers=[PrometheusMetricReader(registry=registry)],
        resource=resource,
        shutdown_on_exit=False,
    )
    return registry, provider


class MetricsRenderer:
    """The Prometheus text of a registry, rendered off the event loop.

    One thread renders, one render at a time. Requests that come while a render runs wait for
    it and share its answer, which is served again for `max_age` seconds: a flood of scrapes
    costs at most one render a second, none of it on the loop.

    Args:
        registry: The registry to render.
        max_age: Seconds an answer is served again.
    """

    def __init__(self, registry: CollectorRegistry, *, max_age: float = METRICS_MAX_AGE) -> None:
        self.registry = registry
        self.max_age = max_age
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="taskflow-metrics")
        self._answers: dict[str, tuple[float, bytes]] = {}  # by content type: (when, text)
        self._renders: dict[str, asyncio.Future[bytes]] = {}  # by content type: running now

    async def render(self, encoder: Callable[[CollectorRegistry], bytes], kind: str) -> bytes:
        """The registry as `encoder` writes it (of content type `kind`), fresh within max_age."""
        answer = self._answers.get(kind)
        if answer is not None and time.monotonic() - answer[0] < self.max_age:
            return answer[1]
        render = self._renders.get(kind)
        if render is None:
            loop = asyncio.get_running_loop()
            render = loop.run_in_executor(self._thread, encoder, self.registry)
            self._renders[kind] = render
            render.add_done_callback(lambda done: self._keep(kind, done))
        # Shielded: a client that goes away must not cancel the render the others wait for.
        return await asyncio.shield(render)

    def _keep(self, kind: str, render: asyncio.Future[bytes]) -> None:
        self._renders.pop(kind, None)
        if not render.cancelled() and render.exception() is None:
            self._answers[kind] = (time.monotonic(), render.result())

    def close(self) -> None:
        """Let the thread end once a render still running is done."""
        self._thread.shutdown(wait=False, cancel_futures=True)


# -- the server ----------------------------------------------------------------------------


class _Busy(asyncio.Protocol):
    """A connection past the limit: answered 503 and closed after BUSY_DELAY, unread.

    The delay keeps a client that asks again at once from making the loop accept and close
    connections as fast as it can.
    """

    def __init__(self) -> None:
        self._answer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        loop = asyncio.get_running_loop()
        self._answer = loop.call_later(BUSY_DELAY, _refuse, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._answer is not None:
            self._answer.cancel()


def _refuse(transport: asyncio.Transport) -> None:
    transport.write(_BUSY)
    transport.close()


_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\n"
    b"Connection: close\r\n\r\n"
)


class _BoundedSite(web.TCPSite):
    """aiohttp's TCP site, serving at most `limit` connections at once."""

    __slots__ = ("_limit",)

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, limit: int) -> None:
        super().__init__(runner, host, port)
        self._limit = limit

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        limit = self._limit

        def connection() -> asyncio.BaseProtocol:
            if len(server.connections) >= limit:
                return _Busy()
            return server()

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            connection, self._host, self._port, backlog=self._backlog
        )
        self._bound_port = int(self._server.sockets[0].getsockname()[1])


class OperationsEndpoint:
    """The operations endpoint of one run of an app.

    The runner opens it before the app starts (so a port that is taken stops the app before
    anything runs), `attach`es the Runtime once the workers are built, and closes it last.

    Args:
        app: The app.
        port: The TCP port; 0 picks a free one (see `port` once open).
        host: The address to listen on.
        monitor: The event-loop watch behind /healthz; without one the endpoint runs its own.
    """

    def __init__(
        self,
        app: App,
        *,
        port: int,
        host: str = DEFAULT_HOST,
        monitor: LoopWatch | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self.monitor = monitor or LoopWatch()
        self._owns_monitor = monitor is None
        self.watchdog: Watchdog | None = None  # the runtime's, once attached
        self.state = EndpointState.UNOPENED
        self.registry, self._provider = _prometheus(app)
        self.runtime: Runtime | None = None
        self._port = port
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._metrics_renderer = MetricsRenderer(self.registry)
        self._asyncapi: dict[str, Any] | None = None

    @property
    def port(self) -> int:
        """The port listened on: the real one once open, even when 0 was asked for."""
        return self._port

    @property
    def meter_provider(self) -> Any:
        """The MeterProvider the app's metrics go to: the one made for /metrics, else the App's."""
        return self._provider if self._provider is not None else self.app.meter_provider

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> OperationsEndpoint:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start listening and measuring the loop.

        Raises:
            ConfigurationError: when the port cannot be listened on (taken, or not allowed).
        """
        if self.state is not EndpointState.UNOPENED:
            raise StateError(f"the operations endpoint is {self.state.value}; it opens only once")
        runner = web.AppRunner(
            self._routes(), access_log=None, shutdown_timeout=SERVER_CLOSE_TIMEOUT
        )
        await runner.setup()
        site = _BoundedSite(runner, self.host, self._port, limit=MAX_CONNECTIONS)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise ConfigurationError(
                f"cannot serve the operations endpoint on {self.host}:{self._port}: "
                f"{exc.strerror or exc}; choose another --http-port (0 picks a free one)"
            ) from None
        self._runner, self._site = runner, site
        self._port = int(runner.addresses[0][1])
        self.state = EndpointState.SERVING
        if self._owns_monitor:
            self.monitor.start()
        logger.info(
            "operations endpoint on http://%s:%d (/healthz /readyz /metrics /status /asyncapi)",
            self.host,
            self._port,
        )

    def attach(self, runtime: Runtime) -> None:
        """Report on `runtime` from now on, and close the door on shutdown."""
        self.runtime = runtime
        self.watchdog = runtime.watchdog
        runtime.manager.before_stop.append(self.stop_accepting)

    async def stop_accepting(self) -> None:
        """Close the listening socket; connections already open are still answered."""
        if self.state is not EndpointState.SERVING:
            return
        assert self._site is not None
        await self._site.stop()
        self.state = EndpointState.DRAINING
        logger.info("operations endpoint: no longer accepting connections")

    async def aclose(self) -> None:
        """Close every connection, stop the loop watch it owns, and shut the metrics down."""
        if self.state is EndpointState.CLOSED:
            return
        self.state = EndpointState.CLOSED
        if self.runtime is not None:
            _discard(self.runtime.manager.before_stop, self.stop_accepting)
        try:
            if self._runner is not None:
                await self._runner.cleanup()
        finally:
            if self._owns_monitor:
                self.monitor.stop()
            self._metrics_renderer.close()
            if self._provider is not None:
                self._provider.shutdown()

    # -- endpoints -------------------------------------------------------------------------

    def _routes(self) -> web.Application:
        routes = web.Application()
        routes.router.add_get("/healthz", self._healthz)
        routes.router.add_get("/readyz", self._readyz)
        routes.router.add_get("/metrics", self._metrics)
        routes.router.add_get("/status", self._status)
        routes.router.add_get("/asyncapi.json", self._asyncapi_json)
        routes.router.add_get("/asyncapi", self._asyncapi_page)
        from taskflow.dashboard.server import Dashboard, RuntimeSources  # Jinja2 only when served

        Dashboard(RuntimeSources(self.app, lambda: self.runtime)).add_routes(routes)
        return routes

    async def _healthz(self, request: web.Request) -> web.Response:
        return _answer(self.health())

    async def _readyz(self, request: web.Request) -> web.Response:
        return _answer(self.readiness())

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await self._metrics_renderer.render(encoder, content_type)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(await self.status())

    async def _asyncapi_json(self, request: web.Request) -> web.Response:
        return web.json_response(self.asyncapi())

    async def _asyncapi_page(self, request: web.Request) -> web.Response:
        return web.Response(text=asyncapi.page(self.asyncapi()), content_type="text/html")

    # -- what they say ---------------------------------------------------------------------

    def asyncapi(self) -> dict[str, Any]:
        """The app's AsyncAPI document, made at the first request (registrations are fixed
        while the app runs)."""
        if self._asyncapi is None:
            self._asyncapi = asyncapi.document(self.app)
        return self._asyncapi

    def health(self) -> dict[str, Any]:
        """The /healthz body: ``{"status": "ok" | "failing", "reasons": [...], ...}``."""
        reasons: list[str] = []
        problem = self.monitor.problem(time.monotonic())
        if problem is not None:
            reasons.append(problem)
        if self.watchdog is not None:
            reasons += self.watchdog.problems(time.monotonic())
        return {
            "status": "failing" if reasons else "ok",
            "reasons": reasons,
            "loop_lag": round(self.monitor.lag, 4),
        }

    def readiness(self) -> dict[str, Any]:
        """The /readyz body: ``{"status": "ready" | "not ready", "reasons": [...]}``."""
        runtime = self.runtime
        if runtime is None:
            reasons = ["starting"]
        elif runtime.manager.stop_requested:
            reasons = ["shutting down"]
        else:
            reasons = _unready(runtime.manager)
        return {"status": "not ready" if reasons else "ready", "reasons": reasons}

    async def status(self) -> dict[str, Any]:
        """The /status body: the app's state and every worker's."""
        return status_body(self.runtime, self.app.name, self.monitor.lag)


def _answer(body: dict[str, Any]) -> web.Response:
    healthy = not body["reasons"]
    return web.json_response(body, status=200 if healthy else 503)


def _unready(manager: Manager) -> list[str]:
    reasons: list[str] = []
    for name, supervision in manager.statuses.items():
        if supervision.state is not WorkerState.RUNNING:
            reasons.append(f"worker {name} is {supervision.state.value}")
            continue
        status = status_of(supervision.worker)
        if isinstance(status, ConsumerStatus) and not status.assigned:
            reasons.append(f"consumer {name} has no partitions assigned")
    return reasons


def _discard(hooks: list[Callable[[], object]], hook: Callable[[], Awaitable[None]]) -> None:
    if hook in hooks:
        hooks.remove(hook)
