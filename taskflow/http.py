"""The operations endpoint: liveness, readiness, metrics and status of a running app, over HTTP.

`App(http_port=...)`, ``--http-port`` or ``TASKFLOW_HTTP_PORT`` turns it on. It is served by
aiohttp's server (`web.AppRunner` and `web.TCPSite`) inside the app's own event loop, with no
signal handlers of its own: the Manager owns SIGINT and SIGTERM.

- ``GET /healthz``: liveness. 503 when the event loop was blocked recently (a `LoopMonitor`
  measures how late a sleeping task wakes up), or a handler has run past its `timeout=` by more
  than a grace (the `Watchdog` of `taskflow.middleware.timeout` notes each timed call).
- ``GET /readyz``: readiness. 503 from the moment a stop is requested, and while any worker is
  not running or any consumer has no partition assigned.
- ``GET /metrics``: the OpenTelemetry metrics in the Prometheus text format.
- ``GET /status``: every worker as JSON.

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
from typing import TYPE_CHECKING, Any

from aiohttp import web
from opentelemetry import metrics
from opentelemetry.metrics._internal import _ProxyMeterProvider
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.exposition import choose_encoder

from taskflow.exceptions import ConfigurationError, StateError
from taskflow.types import WorkerState
from taskflow.workers import ConsumerWorker, ScheduledWorker

if TYPE_CHECKING:
    from types import TracebackType

    from opentelemetry.sdk.metrics import MeterProvider

    from taskflow.app import App
    from taskflow.manager import Manager
    from taskflow.middleware.timeout import Watchdog
    from taskflow.runner import Runtime
    from taskflow.types import Worker

__all__ = ["LoopMonitor", "Operations", "OperationsState"]

logger = logging.getLogger(__name__)

DEFAULT_HOST = "0.0.0.0"  # probes come from the node, not from inside the pod
LOOP_CHECK_INTERVAL = 0.1  # how often the loop monitor wakes up
LOOP_LAG_LIMIT = 1.0  # waking up this late means the event loop was blocked
LOOP_BLOCK_MEMORY = 10.0  # /healthz fails for this long after a block
FACTS_TIMEOUT = 2.0  # /status waits this long for a consumer's lag
SERVER_CLOSE_TIMEOUT = 2.0  # requests still running when the server closes get this long


class OperationsState(enum.Enum):
    """Where the operations endpoint is in its life."""

    UNOPENED = "unopened"
    SERVING = "serving"
    DRAINING = "draining"  # no new connections; open ones are still answered
    CLOSED = "closed"


# -- the event loop ------------------------------------------------------------------------


class LoopMonitor:
    """Measures the event loop's lag: how late a task that sleeps `interval` wakes up.

    A loop that runs blocking code (a sync call in an `async def`, heavy CPU) wakes everything
    late; a lag of `limit` or more counts as a block, and `problem` reports it for `memory`
    seconds. A loop blocked right now cannot answer at all: the probe's own timeout is the signal.

    Args:
        interval: Seconds between wake-ups.
        limit: A lag of this many seconds is a block.
        memory: Seconds for which a block is reported.
    """

    def __init__(
        self,
        *,
        interval: float = LOOP_CHECK_INTERVAL,
        limit: float = LOOP_LAG_LIMIT,
        memory: float = LOOP_BLOCK_MEMORY,
    ) -> None:
        self.interval = interval
        self.limit = limit
        self.memory = memory
        self.lag = 0.0
        self.blocked: tuple[float, float] | None = None  # (when it was noticed, how long)
        self._due: float | None = None  # when the sleeping monitor should wake up

    async def run(self) -> None:
        """Measure until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            self._due = loop.time() + self.interval
            # A sleep, not an event: the lateness of this very wake-up is what is measured.
            await asyncio.sleep(self.interval)
            now = loop.time()
            self.note(now - self._due, now)

    def note(self, lag: float, now: float) -> None:
        """Record one measured lag."""
        self.lag = max(lag, 0.0)
        if lag >= self.limit:
            self.blocked = (now, lag)
            logger.warning("the event loop was blocked for %.2fs", lag)

    def problem(self, now: float) -> str | None:
        """Why the loop is unhealthy at loop time `now`, or None."""
        # The monitor may not have run yet after a block that just ended: its overdue wake-up
        # tells the same story.
        if self._due is not None and now - self._due >= self.limit:
            return f"the event loop was blocked for {now - self._due:.2f}s until just now"
        if self.blocked is not None:
            noticed, lag = self.blocked
            if now - noticed <= self.memory:
                return f"the event loop was blocked for {lag:.2f}s, {now - noticed:.1f}s ago"
        return None


# -- handlers ------------------------------------------------------------------------------


# -- metrics -------------------------------------------------------------------------------

_UNSET_PROVIDERS = (_ProxyMeterProvider, metrics.NoOpMeterProvider)


def _prometheus(app: App) -> tuple[CollectorRegistry, MeterProvider | None]:
    """The registry /metrics serves, and the MeterProvider made for it (None: the user's own).

    Without a configured MeterProvider (on the App or globally) taskflow makes one whose only
    reader is a Prometheus reader on a private registry. A user's own provider cannot be given
    a reader after it is built, so then /metrics serves prometheus_client's default registry,
    where a `PrometheusMetricReader()` the user added puts its metrics.
    """
    if app.meter_provider is not None or not isinstance(
        metrics.get_meter_provider(), _UNSET_PROVIDERS
    ):
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


# -- the server ----------------------------------------------------------------------------


class Operations:
    """The operations endpoint of one run of an app.

    The runner opens it before the app starts (so a port that is taken stops the app before
    anything runs), `attach`es the Runtime once the workers are built, and closes it last.

    Args:
        app: The app.
        port: The TCP port; 0 picks a free one (see `port` once open).
        host: The address to listen on.
        monitor: The event-loop monitor behind /healthz.
    """

    def __init__(
        self,
        app: App,
        *,
        port: int,
        host: str = DEFAULT_HOST,
        monitor: LoopMonitor | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self.monitor = monitor or LoopMonitor()
        self.watchdog: Watchdog | None = None  # the runtime's, once attached
        self.state = OperationsState.UNOPENED
        self.registry, self._provider = _prometheus(app)
        self.runtime: Runtime | None = None
        self._port = port
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._monitor: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        """The port listened on: the real one once open, even when 0 was asked for."""
        return self._port

    @property
    def meter_provider(self) -> Any:
        """The MeterProvider the app's metrics go to: the one made for /metrics, else the App's."""
        return self._provider if self._provider is not None else self.app.meter_provider

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Operations:
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
        if self.state is not OperationsState.UNOPENED:
            raise StateError(f"the operations endpoint is {self.state.value}; it opens only once")
        runner = web.AppRunner(
            self._routes(), access_log=None, shutdown_timeout=SERVER_CLOSE_TIMEOUT
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port)
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
        self.state = OperationsState.SERVING
        # Not in a TaskGroup: one spanning the app's run would wrap the app's own errors in an
        # ExceptionGroup. `aclose` cancels and awaits it.
        self._monitor = asyncio.create_task(self.monitor.run(), name="taskflow:loop-monitor")
        logger.info(
            "operations endpoint on http://%s:%d (/healthz /readyz /metrics /status)",
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
        if self.state is not OperationsState.SERVING:
            return
        assert self._site is not None
        await self._site.stop()
        self.state = OperationsState.DRAINING
        logger.info("operations endpoint: no longer accepting connections")

    async def aclose(self) -> None:
        """Close every connection, stop the loop monitor, and shut the metrics provider down."""
        if self.state is OperationsState.CLOSED:
            return
        self.state = OperationsState.CLOSED
        if self.runtime is not None:
            _discard(self.runtime.manager.before_stop, self.stop_accepting)
        try:
            if self._runner is not None:
                await self._runner.cleanup()
        finally:
            if self._monitor is not None:
                self._monitor.cancel()
                await asyncio.wait({self._monitor})
            if self._provider is not None:
                self._provider.shutdown()

    # -- endpoints -------------------------------------------------------------------------

    def _routes(self) -> web.Application:
        routes = web.Application()
        routes.router.add_get("/healthz", self._healthz)
        routes.router.add_get("/readyz", self._readyz)
        routes.router.add_get("/metrics", self._metrics)
        routes.router.add_get("/status", self._status)
        return routes

    async def _healthz(self, request: web.Request) -> web.Response:
        return _answer(self.health())

    async def _readyz(self, request: web.Request) -> web.Response:
        return _answer(self.readiness())

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(await self.status())

    # -- what they say ---------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """The /healthz body: ``{"status": "ok" | "failing", "reasons": [...], ...}``."""
        reasons: list[str] = []
        problem = self.monitor.problem(asyncio.get_running_loop().time())
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
        runtime = self.runtime
        workers: list[dict[str, Any]] = []
        if runtime is not None:
            manager = runtime.manager
            facts = await asyncio.gather(*(self._describe(manager, w) for w in runtime.workers))
            workers = list(facts)
        return {
            "app": self.app.name,
            "state": _app_state(runtime),
            "loop_lag": round(self.monitor.lag, 4),
            "workers": workers,
        }

    async def _describe(self, manager: Manager, worker: Worker) -> dict[str, Any]:
        status = manager.statuses.get(worker.name)
        entry: dict[str, Any] = {
            "name": worker.name,
            "kind": getattr(worker, "kind", "worker"),
            "state": status.state.value if status else WorkerState.STOPPED.value,
            "restarts": status.restarts if status else 0,
            "last_error": status.last_error if status else None,
        }
        if self.watchdog is not None and worker.name in self.watchdog.threads:
            entry["stuck_threads"] = self.watchdog.stuck_threads()[worker.name]
        if isinstance(worker, ConsumerWorker):
            entry |= await _consumer(worker)
        elif isinstance(worker, ScheduledWorker):
            entry |= _periodic(worker)
        return entry


def _answer(body: dict[str, Any]) -> web.Response:
    healthy = not body["reasons"]
    return web.json_response(body, status=200 if healthy else 503)


def _unready(manager: Manager) -> list[str]:
    reasons: list[str] = []
    for name, status in manager.statuses.items():
        if status.state is not WorkerState.RUNNING:
            reasons.append(f"worker {name} is {status.state.value}")
        elif isinstance(status.worker, ConsumerWorker) and not status.worker.facts().assigned:
            reasons.append(f"consumer {name} has no partitions assigned")
    return reasons


def _app_state(runtime: Runtime | None) -> str:
    if runtime is None:
        return "starting"
    manager = runtime.manager
    if manager.stop_requested:
        return "stopping"
    if all(status.task is None for status in manager.statuses.values()):
        return "starting"
    return "running"


async def _consumer(worker: ConsumerWorker) -> dict[str, Any]:
    facts = worker.facts()
    try:
        async with asyncio.timeout(FACTS_TIMEOUT):
            offsets = await worker.partition_facts()
    except Exception as exc:  # lag is a nicety: /status answers without it
        logger.debug("no partition facts for %s: %s", worker.name, exc or "timed out")
        offsets = {}
    partitions = []
    for tp in sorted(facts.assigned):
        known = offsets.get(tp)
        partitions.append(
            {
                "topic": tp.topic,
                "partition": tp.partition,
                "committed": known.committed if known else facts.committed.get(tp),
                "high_watermark": known.high_watermark if known else None,
                "lag": known.lag if known else None,
                "paused": tp in facts.paused,
            }
        )
    lags = [p["lag"] for p in partitions if p["lag"] is not None]
    last_poll = facts.last_poll
    return {
        "topics": list(worker.spec.topics),
        "group": worker.spec.group,
        "partitions": partitions,
        "lag": sum(lags) if lags else None,  # over the partitions whose lag is known
        "in_flight": facts.in_flight,
        "rebalances": facts.rebalances,
        "last_poll_age": round(time.monotonic() - last_poll, 3) if last_poll is not None else None,
    }


def _periodic(worker: ScheduledWorker) -> dict[str, Any]:
    last = worker.last_tick
    return {
        "schedule": worker.spec.schedule.describe(),
        "last_run": last.isoformat() if last is not None else None,
        "next_run": worker.next_tick().isoformat(),
        "in_flight": 1 if worker.running else 0,
        "runs": worker.runs,
        "failures": worker.failures,
        "skipped": worker.skipped,
    }


def _discard(hooks: list[Callable[[], object]], hook: Callable[[], Awaitable[None]]) -> None:
    if hook in hooks:
        hooks.remove(hook)
