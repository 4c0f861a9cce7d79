"""Running an App: connect the broker, enter the lifespan, build the workers, run the Manager.

`serve` (and `run`, for `taskflow run`) own the process: signal handlers, `gc.freeze()`, the exit
code. `running` is for a program that owns them itself, a web app's lifespan say: the Manager runs
the workers in the background for the life of the block (or none runs, with `workers=False`).
Both are built on `open_runtime`, which opens everything and builds the workers without starting
them.

The order on the way up is the operations endpoint (with `http_port`), Redis, broker, lifespan and
startup hooks, the fleet snapshots (with Redis, `taskflow.fleet`), workers; on the way down it is
the reverse: workers drain, the snapshot is withdrawn, shutdown hooks and lifespan exit, the
broker sends what is queued (`taskflow.deliveries`) and closes, and the operations endpoint
closes last (it stops accepting connections, and /readyz answers 503, before any worker is asked
to stop).

A loop watch (`taskflow.loopwatch`) runs for the whole run, with or without the endpoint.

With signal handlers, SIGINT, SIGTERM and SIGHUP are stop requests from the very start. One that
comes during start-up (the broker does not answer, a startup hook hangs) cancels the start-up:
whatever was opened is closed, and `StartupInterrupted` is raised, all within `shutdown_timeout`.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from taskflow.brokers import broker_from_settings
from taskflow.brokers.base import ConsumerOptions
from taskflow.deliveries import Deliveries
from taskflow.exceptions import BrokerError, ConfigurationError, StartupInterrupted
from taskflow.fleet import publishing_snapshots
from taskflow.loopwatch import LoopWatch
from taskflow.manager import Manager, ShutdownReport
from taskflow.middleware import BatchAware, build_stack
from taskflow.middleware.builtin import Resources, layers_for
from taskflow.middleware.timeout import Watchdog
from taskflow.specs import consumer_stages
from taskflow.stores.connect import Stores, open_stores
from taskflow.telemetry.instruments import observe
from taskflow.workers import ConsumerWorker, FunctionWorker, ScheduledWorker
from taskflow.workers.budget import BufferBudget

if TYPE_CHECKING:
    from taskflow.app import App
    from taskflow.brokers.base import Broker
    from taskflow.handler import Handler
    from taskflow.http import OperationsEndpoint
    from taskflow.specs import ConsumerSpec, ScheduleSpec
    from taskflow.stores.connect import RedisClient
    from taskflow.types import Worker

__all__ = [
    "EXIT_CLEAN",
    "EXIT_UNCLEAN",
    "Runtime",
    "build_workers",
    "consumer_options",
    "group_instance_id",
    "open_runtime",
    "run",
    "running",
    "serve",
]

logger = logging.getLogger("taskflow")

EXIT_CLEAN = 0
EXIT_UNCLEAN = 1  # something had to be cancelled, or startup failed or was interrupted
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
BROKER_CLOSE_TIMEOUT = 10.0


@dataclass(slots=True)
class Runtime:
    """A running app: its broker, its workers, its Manager.

    Attributes:
        app: The [App][taskflow.App] that is running.
        broker: The connected broker.
        manager: The [Manager][taskflow.Manager] that runs the workers.
        workers: Every worker, built from the app's registrations, in registration order.
        stores: Where claims, leases, limits and run records live.
        http: The operations endpoint, with `http_port`; `http.port` is the port it listens on.
        deliveries: The records published without waiting that the broker has not answered yet,
            and the count of those it did not take.
        app_ref: How ``taskflow`` commands name the app (``MODULE:APP``), when the run was
            started by one (`taskflow run`); None when the app was run another way.
    """

    app: App
    broker: Broker
    manager: Manager
    workers: list[Worker] = field(default_factory=list)
    stores: Stores | None = None  # where claims, leases, limits and run records live
    http: OperationsEndpoint | None = None  # the operations endpoint; `http.port` is the real port
    watchdog: Watchdog | None = None  # the handler calls running under a timeout
    loop_watch: LoopWatch | None = None  # watches the event loop for blocks
    deliveries: Deliveries = field(default_factory=Deliveries)  # what publish(wait=False) queued
    app_ref: str | None = None  # the MODULE:APP `taskflow run` was given

    @property
    def redis(self) -> RedisClient | None:
        """The app's Redis client while it runs; None without Redis."""
        return None if self.stores is None else self.stores.client

    def worker(self, name: str) -> Worker:
        """The worker called `name`."""
        for worker in self.workers:
            if worker.name == name:
                return worker
        raise KeyError(name)


def consumer_options(spec: ConsumerSpec, instance_id: str | None) -> ConsumerOptions:
    """What a registration asks of its broker consumer: where to start, its own options, and
    with an instance id, its static membership (`group_instance_id`)."""
    static = None if instance_id is None else group_instance_id(instance_id, spec.name)
    return ConsumerOptions(
        auto_offset_reset=spec.start, extra=spec.consumer_options, group_instance_id=static
    )


_MEMBER_PART = re.compile(r"[A-Za-z0-9._-]{1,100}")


def group_instance_id(instance_id: str, worker: str) -> str:
    """The group instance id of one consumer of a replica: ``<instance_id>.<worker name>``.

    Each registration is a member of its group of its own, so each needs an id of its own. A
    worker name Kafka would not take in an id (other characters, over 100 of them) is written
    with those replaced and a hash of the whole name, so that it stays one and the same.
    """
    if _MEMBER_PART.fullmatch(worker):
        return f"{instance_id}.{worker}"
    digest = hashlib.sha256(worker.encode()).hexdigest()[:10]
    return f"{instance_id}.{re.sub(r'[^A-Za-z0-9._-]', '_', worker)[:80]}-{digest}"


def _check_consumer(broker: Broker, spec: ConsumerSpec, options: ConsumerOptions) -> None:
    """Refuse, before anything starts, a registration's Kafka options that clash with the
    broker's own (each level was checked alone when it was given)."""
    kafka = sys.modules.get("taskflow.brokers.kafka")  # not loaded: not a Kafka broker
    if kafka is not None and isinstance(broker, kafka.KafkaBroker):
        try:
            broker.consumer_settings(spec.consumer_group, options)
        except ConfigurationError as exc:
            raise ConfigurationError(f"consumer {spec.name}: {exc}") from exc


def resolve_broker(app: App) -> Broker:
    """The app's broker object, built from its URL when it was given one."""
    return broker_from_settings(app.settings)


def build_workers(
    app: App,
    broker: Broker,
    stopping: asyncio.Event,
    *,
    commit_interval: float | None = None,
    resources: Resources | None = None,
) -> list[Worker]:
    """Build one worker per registration, with its middleware stack, in registration order.

    Raises:
        ConfigurationError: when a registration needs a resource that is not configured.
    """
    interval = app.settings.commit_interval if commit_interval is None else commit_interval
    resources = resources or Resources(app.name, _in_process(app))
    # One memory budget for every consumer of the process (`taskflow.workers.budget`).
    consumers = [stage for spec in app.consumers for stage in consumer_stages(spec)]
    budget = BufferBudget(app.settings.buffer_bytes, consumers=len(consumers))

    def stack(
        spec: ConsumerSpec | ScheduleSpec, batch_aware: list[BatchAware] | None = None
    ) -> Handler:
        layers = (*app.middleware, *layers_for(spec, resources), *spec.middleware)
        return build_stack(spec.handler, layers, batch_aware)

    def consumer(spec: ConsumerSpec) -> ConsumerWorker:
        batch_aware: list[BatchAware] = []
        handler = stack(spec, batch_aware)
        options = consumer_options(spec, app.settings.instance_id)
        _check_consumer(broker, spec, options)
        return ConsumerWorker(
            spec,
            app,
            broker,
            handler,
            stopping=stopping,
            commit_interval=interval,
            options=options,
            batch_aware=batch_aware,
            budget=budget,
        )

    # A registration with retry topics has a second consumer, its retry stage, right after it.
    workers: list[Worker] = [consumer(spec) for spec in consumers]
    workers += [
        ScheduledWorker(
            spec,
            app,
            stack(spec),
            clock=app.clock,
            stopping=stopping,
            stores=resources.stores,
        )
        for spec in app.schedules
    ]
    workers += [FunctionWorker(spec, app) for spec in app.function_workers]
    workers += app.workers
    return workers


@asynccontextmanager
async def open_runtime(
    app: App,
    *,
    broker: Broker | None = None,
    commit_interval: float | None = None,
    shutdown_timeout: float | None = None,
    install_signal_handlers: bool = False,
    workers: bool = True,
    snapshots: bool = True,
    app_ref: str | None = None,
) -> AsyncIterator[Runtime]:
    """Start the broker and lifespan and build the workers; yield the Runtime; then tear down.

    The workers are not started: call `runtime.manager.run()` (or use `running`, which does).
    With `workers=False` none is built: the Runtime only publishes. With Redis, the run publishes
    its fleet snapshots (`taskflow.fleet`) unless `snapshots` is False. With
    `install_signal_handlers`, SIGINT, SIGTERM and SIGHUP request a graceful stop from the very
    start. `app_ref` is how ``taskflow`` commands name the app, kept on the Runtime (the
    dashboard's replay commands show it). One that comes before
    the Runtime is yielded cancels the start-up: what was opened is closed, within the shutdown
    timeout, and [StartupInterrupted][taskflow.StartupInterrupted] is raised. Once the Runtime is
    yielded a signal is the Manager's; a second one while no worker is running (a shutdown hook
    hangs, say) cancels the task that entered this context, so the process can always be stopped.

    Raises:
        StartupInterrupted: when a signal stopped the start-up.
    """
    broker = broker or resolve_broker(app)
    if broker.url.startswith("memory:") and app.settings.broker is None:
        logger.info(
            "using the embedded memory broker (%s); set --broker or TASKFLOW_BROKER to use Kafka",
            broker.url,
        )
    stopping = asyncio.Event()
    manager = Manager(
        shutdown_timeout=(
            app.settings.shutdown_timeout if shutdown_timeout is None else shutdown_timeout
        ),
        stopping=stopping,
    )
    signals = _Signals(manager) if install_signal_handlers else None
    loop_watch = LoopWatch()
    loop_watch.start()
    try:
        async with _operations(app, loop_watch) as http, _stores(app, workers) as stores:
            meter_provider = app.meter_provider if http is None else http.meter_provider
            watchdog = Watchdog()
            resources = Resources(app.name, stores, app.tracer_provider, meter_provider, watchdog)
            if workers:
                build_workers(app, broker, stopping, resources=resources)  # refuse bad config
            await stores.check()
            await broker.start()
            deliveries = Deliveries()
            app.attach(broker, deliveries)
            try:
                async with app.lifespan_context():
                    built: list[Worker] = []
                    if workers:
                        built = build_workers(
                            app,
                            broker,
                            stopping,
                            commit_interval=commit_interval,
                            resources=resources,
                        )
                    for worker in built:
                        manager.register(worker)
                    with observe(built, resources, deliveries):  # the metrics, when set up
                        runtime = Runtime(
                            app,
                            broker,
                            manager,
                            built,
                            stores,
                            http=http,
                            watchdog=watchdog,
                            loop_watch=loop_watch,
                            deliveries=deliveries,
                            app_ref=app_ref,
                        )
                        if http is not None:
                            http.attach(runtime)
                        if signals is not None:
                            signals.started()
                        fleet = publishing_snapshots(runtime) if snapshots else nullcontext()
                        async with fleet:
                            yield runtime
            finally:
                app.attach(None)
                await _close(broker, deliveries)
    except asyncio.CancelledError:
        if signals is None or signals.interrupted is None:
            raise
        signals.uncancel()
        raise StartupInterrupted(f"{signals.interrupted} came before it was ready") from None
    finally:
        if signals is not None:
            signals.remove()
        loop_watch.stop()


@asynccontextmanager
async def running(
    app: App, *, workers: bool = True, shutdown_timeout: float | None = None
) -> AsyncIterator[Runtime]:
    """Run `app` inside a program that owns the event loop and the process, such as a web app.

    On entry it opens what `taskflow run` opens (the operations endpoint with `http_port`, Redis,
    the broker, the app's lifespan and startup hooks); then the Manager runs the workers in the
    background for as long as the block lasts. On exit the workers drain as on SIGTERM (within
    `shutdown_timeout`, the app's by default), then the shutdown hooks run and the broker sends
    what is queued and closes. No signal handler is installed: the host (uvicorn, say) owns the
    signals, and ends the block when it stops.

    With `workers=False` no consumer, periodic task or worker runs (none joins a group): the
    broker connects and `app.publish` works, for a process that only publishes.

    Args:
        app: The app to run.
        workers: False to only publish.
        shutdown_timeout: Seconds the workers get to finish on exit; the app's setting by default.

    Yields:
        The [Runtime][taskflow.runner.Runtime]: its `manager` says how the workers are doing.

    Example:
        ```python
        from contextlib import asynccontextmanager

        import taskflow
        from fastapi import FastAPI

        @asynccontextmanager
        async def lifespan(api: FastAPI):
            async with taskflow.running(app):
                yield

        api = FastAPI(lifespan=lifespan)
        ```
    """
    async with open_runtime(app, shutdown_timeout=shutdown_timeout, workers=workers) as runtime:
        if not workers:
            logger.info("app %s running to publish only: no worker runs", app.name)
            yield runtime
            return
        async with _in_background(runtime):
            yield runtime


@asynccontextmanager
async def _in_background(runtime: Runtime) -> AsyncIterator[None]:
    """The Manager's run as a task for the life of the block; on exit, a graceful stop."""
    app, manager = runtime.app, runtime.manager
    _log_start(runtime)
    leaving = False

    def ended(task: asyncio.Task[ShutdownReport]) -> None:
        if leaving or task.cancelled():
            return
        error = task.exception()  # raised again when the block ends
        why = repr(error) if error is not None else task.result().signal or "stop requested"
        logger.error(
            "the workers of app %s stopped while the program goes on (%s); "
            "stop the program to restart them",
            app.name,
            why,
        )

    task = asyncio.create_task(manager.run(), name=f"taskflow:{app.name}")
    task.add_done_callback(ended)
    try:
        await asyncio.sleep(0)  # its first step: the Manager is running before the block begins
        yield
    finally:
        leaving = True
        if not manager.stop_requested:
            manager.request_stop("the program is stopping")
        report = await task  # a cancellation of this task cancels it too, and waits for it
        _log_report(app, report)


@asynccontextmanager
async def _operations(app: App, loop_watch: LoopWatch) -> AsyncIterator[OperationsEndpoint | None]:
    """The operations endpoint, listening, when the app has an `http_port`; else None.

    It opens first, so a port that is taken stops the app before anything starts, and closes
    last; it stops accepting connections before any worker is asked to stop.
    """
    settings = app.settings
    if settings.http_port is None:
        yield None
        return
    from taskflow.http import OperationsEndpoint  # aiohttp and Prometheus only when asked for

    port, host = settings.http_port, settings.http_host
    endpoint = OperationsEndpoint(app, port=port, host=host, monitor=loop_watch)
    async with endpoint as http:
        yield http


def _stores(app: App, workers: bool) -> AbstractAsyncContextManager[Stores]:
    """The app's stores, on Redis when it has a URL (`taskflow.stores.connect`); the app's own
    idempotency store is used (and asked whether it answers) only when a registration that will
    run is idempotent."""
    specs: list[ConsumerSpec | ScheduleSpec] = [*app.consumers, *app.schedules]
    idempotent = workers and any(spec.idempotent for spec in specs)
    store = app.idempotency_store if idempotent else None
    settings = app.settings
    return open_stores(
        app.name,
        settings.redis_url,
        idempotency=store,
        username=settings.redis_username,
        password=settings.redis_password,
    )


def _in_process(app: App) -> Stores:
    return Stores.in_process(app.name, idempotency=app.idempotency_store)


_early: list[signal.Signals] = []


def catch_early_signals() -> Callable[[], None]:
    """Keep a stop signal that comes before the event loop listens, while the app is imported.

    Without this, SIGTERM during the import of a slow app would end the process at once, with
    no line in the log. `taskflow run` calls it first; the loop's handlers, once installed, act
    on a signal kept here as if it had just come. Returns a function that puts back the
    handlers that were there before.
    """
    before = {sig: signal.signal(sig, _keep_early) for sig in STOP_SIGNALS}

    def restore() -> None:
        _early.clear()
        for sig, handler in before.items():
            signal.signal(sig, handler)

    return restore


def _keep_early(signum: int, frame: object) -> None:
    _early.append(signal.Signals(signum))


def early_signal() -> signal.Signals | None:
    """The first stop signal kept by `catch_early_signals`, taken (None if none came)."""
    if not _early:
        return None
    first = _early[0]
    _early.clear()
    return first


class _Signals:
    """SIGINT, SIGTERM and SIGHUP as stop requests, from before start-up until the run's end.

    During start-up a signal cancels the task that is starting (`interrupted` names it), and
    cancels it again if closing what was opened runs past the shutdown timeout. While workers
    run, the Manager handles a second signal itself (it cancels them); outside that time nothing
    else would listen to it, so a second signal cancels the task running the app.
    """

    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.interrupted: str | None = None  # the signal that stopped the start-up
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._starting = True
        self._received = 0
        self._cancels = 0
        self._deadline: asyncio.TimerHandle | None = None
        for sig in STOP_SIGNALS:
            self._loop.add_signal_handler(sig, self._on_signal, sig)
        early = early_signal()
        if early is not None:
            self._loop.call_soon(self._on_signal, early)

    def started(self) -> None:
        """Start-up is over: from now on a first signal is the Manager's alone."""
        self._starting = False

    def _on_signal(self, sig: signal.Signals) -> None:
        self._received += 1
        if self._starting:
            self._interrupt(sig)
            return
        self.manager.request_stop(sig.name)
        if self._received > 1 and not self._workers_running():
            self._cancel(f"second {sig.name}")

    def _interrupt(self, sig: signal.Signals) -> None:
        if self.interrupted is not None:
            logger.warning("second %s during start-up: cancelling what is left", sig.name)
            self._cancel(f"second {sig.name}")
            return
        self.interrupted = sig.name
        logger.warning(
            "%s during start-up: interrupting it and closing what was opened, at most %gs",
            sig.name,
            self.manager.shutdown_timeout,
        )
        self._cancel(f"{sig.name} during start-up")
        self._deadline = self._loop.call_later(
            self.manager.shutdown_timeout, self._cancel, "the shutdown timeout"
        )

    def _workers_running(self) -> bool:
        return any(
            status.task is not None and not status.task.done()
            for status in self.manager.statuses.values()
        )

    def _cancel(self, why: str) -> None:
        if self._task is not None and not self._task.done():
            self._cancels += 1
            self._task.cancel(why)

    def uncancel(self) -> None:
        """Take back the cancellations made here, once they are turned into an error."""
        if self._task is not None:
            for _ in range(min(self._cancels, self._task.cancelling())):
                self._task.uncancel()
        self._cancels = 0

    def remove(self) -> None:
        """Remove the handlers (and the start-up deadline)."""
        if self._deadline is not None:
            self._deadline.cancel()
        for sig in STOP_SIGNALS:
            self._loop.remove_signal_handler(sig)


async def _close(broker: Broker, deliveries: Deliveries) -> None:
    """Close the broker, which sends what is queued, within BROKER_CLOSE_TIMEOUT; then report
    the records published without waiting that it did not deliver."""
    if deliveries.pending:
        logger.info(
            "sending %d record(s) published without waiting before the broker closes, at most %gs",
            len(deliveries.pending),
            BROKER_CLOSE_TIMEOUT,
        )
    try:
        async with asyncio.timeout(BROKER_CLOSE_TIMEOUT):
            await broker.close()
            await deliveries.settled()
    except (TimeoutError, BrokerError) as exc:
        logger.error("closing the broker failed: %s", exc or "timed out")
    finally:
        deliveries.abandon()


async def serve(
    app: App,
    *,
    install_signal_handlers: bool = True,
    shutdown_timeout: float | None = None,
    on_ready: Callable[[Runtime], object] | None = None,
    app_ref: str | None = None,
) -> ShutdownReport:
    """Run `app` until SIGINT, SIGTERM or SIGHUP (or `request_stop`), then shut down gracefully.

    `app_ref` is the ``MODULE:APP`` the app was loaded from, when a command loaded it.

    Raises:
        StartupInterrupted: when a signal came before the app was ready.
    """
    async with open_runtime(
        app,
        shutdown_timeout=shutdown_timeout,
        install_signal_handlers=install_signal_handlers,
        app_ref=app_ref,
    ) as runtime:
        _log_start(runtime)
        # What start-up made (modules, the app, its workers) lives as long as the process: moved
        # out of the collector's reach, a full collection no longer walks it and so pauses
        # periodic tasks far less (bench/scheduler.py measures their lateness).
        gc.freeze()
        if on_ready is not None:
            on_ready(runtime)
        report = await runtime.manager.run()
    _log_report(app, report)
    return report


def _log_start(runtime: Runtime) -> None:
    logger.info(
        "app %s running %d worker(s): %s",
        runtime.app.name,
        len(runtime.workers),
        ", ".join(w.name for w in runtime.workers) or "none",
    )


def _log_report(app: App, report: ShutdownReport) -> None:
    if report.clean:
        logger.info("app %s stopped cleanly", app.name)
    else:
        logger.error("app %s stopped after cancelling %s", app.name, ", ".join(report.cancelled))


def run(app: App, *, shutdown_timeout: float | None = None) -> int:
    """Run `app` in a new event loop until a signal; return the process exit code."""
    try:
        report = asyncio.run(serve(app, shutdown_timeout=shutdown_timeout))
    except StartupInterrupted as exc:
        logger.warning("app %s did not run: %s", app.name, exc)
        return EXIT_UNCLEAN
    if report.exit_code is not None:
        return report.exit_code
    return EXIT_CLEAN if report.clean else EXIT_UNCLEAN
