"""The App: what a service registers (consumers, periodic tasks, workers, lifespan) and publishes.

Everything is done by an `add_*` method; the decorators (`consume`, `every`, `cron`, `worker`,
`on_startup`, `on_shutdown`) are sugar over them and return the function unchanged. The App holds
registrations only; `taskflow.runner` builds the workers from them and runs them under a Manager.
"""

from __future__ import annotations

import inspect
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta, tzinfo
from typing import TYPE_CHECKING, Any, TypeVar

from taskflow.backoff import Backoff
from taskflow.clock import Clock, SystemClock
from taskflow.codec import encode_headers, encode_key, encode_value
from taskflow.config import DEFAULT_BROKER, Settings
from taskflow.exceptions import ConfigurationError, StateError
from taskflow.handler import consumer_handler, handler_name, periodic_handler
from taskflow.middleware.telemetry import publish_tracer, traced_publish, with_trace_context
from taskflow.ratelimit import RateLimit
from taskflow.ratelimit import rate_limit as parse_rate_limit
from taskflow.schedule import Cron, Schedule, interval
from taskflow.specs import (
    DEFAULT_GRACE,
    DEFAULT_LEASE,
    DEFAULT_RETENTION,
    CatchUp,
    ConsumerSpec,
    FunctionWorkerSpec,
    IdempotencyKey,
    MiddlewareFactory,
    OnStoreError,
    Ordering,
    RateLimitScope,
    ScheduleSpec,
)
from taskflow.stores.base import IdempotencyStore
from taskflow.types import Worker

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from taskflow.brokers.base import Broker

__all__ = ["App", "Lifespan", "State"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
Lifespan = Callable[["App"], AbstractAsyncContextManager[None]]
Hook = Callable[[], Awaitable[None]]

_NAME = re.compile(r"[A-Za-z0-9._-]+")  # used with fullmatch: `$` would let "x\n" through
_MAX_TOPIC = 249  # Kafka's limit on a topic name
_ORDERINGS = ("partition", "key", "none")


class State:
    """An attribute namespace for resources opened at startup (the seed's ServiceContext).

    Example:
        ```python
        @app.on_startup
        async def open_db() -> None:
            app.state.db = await connect()
        ```
    """

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(
            f"app.state has no {name!r}; set it in a startup hook or the lifespan"
        ) from None

    def __setattr__(self, name: str, value: Any) -> None:  # typed: any name may be set
        super().__setattr__(name, value)


class App:
    """A taskflow application: a named set of consumers, periodic tasks and workers.

    Args:
        name: The app's name; also the default consumer group. Letters, digits, `.`, `_`, `-`.
        broker: A broker URL (`memory://`, `kafka://host:port,…`) or a Broker object; default
            the embedded memory broker.
        broker_options: Options for the broker built from the URL; for Kafka, any aiokafka
            consumer or producer option (security_protocol, sasl_*, ssl_context, client_id, …).
        redis_url: A Redis URL for idempotency and fleet scheduling.
        lifespan: A function taking the app and returning an async context manager that is
            entered before workers start and exited after they stop.
        middleware: App-wide middleware, outermost first.
        shutdown_timeout: Seconds to let in-flight handlers and jobs finish on shutdown
            (default 30).
        commit_interval: Seconds between offset commits while consuming (default 1).
        clock: Where periodic tasks read the time; tests pass a `ManualClock`.
        tracer_provider: The OpenTelemetry TracerProvider for spans; default the global one.
        meter_provider: The OpenTelemetry MeterProvider for metrics; default the global one.
        idempotent: The default of `idempotent=` for every consumer and periodic task (default
            False).
        idempotency_store: Where idempotency claims live instead of Redis, e.g.
            `MemoryIdempotencyStore()` for tests and single-process dev.
        http_port: Serve /healthz, /readyz, /metrics and /status on this TCP port while the app
            runs (0 picks a free one); default no endpoint.

    Each option that can be written as text also comes from a `TASKFLOW_*` environment variable,
    which wins over the argument (`TASKFLOW_BROKER`, `TASKFLOW_KAFKA_<OPTION>`,
    `TASKFLOW_REDIS_URL`, `TASKFLOW_SHUTDOWN_TIMEOUT`, `TASKFLOW_COMMIT_INTERVAL`,
    `TASKFLOW_IDEMPOTENT`, `TASKFLOW_HTTP_PORT`); a `taskflow` flag wins over both. `settings`
    says where each value came from. See the configuration guide.

    Example:
        ```python
        app = App("billing")

        @app.consume("orders")
        async def on_order(order: dict, ctx: Context) -> None: ...

        @app.every(minutes=5)
        async def cleanup(ctx: Context) -> None: ...
        ```
    """

    def __init__(
        self,
        name: str,
        *,
        broker: str | Broker | None = None,
        broker_options: Mapping[str, Any] | None = None,
        redis_url: str | None = None,
        lifespan: Lifespan | None = None,
        middleware: Sequence[MiddlewareFactory] = (),
        shutdown_timeout: float | None = None,
        commit_interval: float | None = None,
        clock: Clock | None = None,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        idempotent: bool | None = None,
        idempotency_store: IdempotencyStore | None = None,
        http_port: int | None = None,
    ) -> None:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigurationError(
                f"an app name uses letters, digits, '.', '_' and '-', got {name!r}"
            )
        self.name = name
        settings = Settings.resolve(
            {
                "broker": broker,
                "broker_options": broker_options,
                "redis_url": redis_url,
                "shutdown_timeout": shutdown_timeout,
                "commit_interval": commit_interval,
                "idempotent": idempotent,
                "http_port": http_port,
            },
            kafka_parser=_kafka_options,
        )
        self.settings = settings
        """The options in effect when the App was made, and where each came from."""
        self.broker: str | Broker | None = settings.broker
        self.broker_options: dict[str, Any] = dict(settings.broker_options)
        self.redis_url: str | None = settings.redis_url
        self.lifespan = lifespan
        self.middleware = _middleware(middleware)
        self.shutdown_timeout = settings.shutdown_timeout
        self.commit_interval = settings.commit_interval
        self.clock: Clock = clock or SystemClock()
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.idempotent = settings.idempotent
        self.idempotency_store = _idempotency_store(idempotency_store)
        self.http_port = settings.http_port
        self.state = State()
        self.consumers: list[ConsumerSpec] = []
        self.schedules: list[ScheduleSpec] = []
        self.function_workers: list[FunctionWorkerSpec] = []
        self.workers: list[Worker] = []
        self.startup_hooks: list[Hook] = []
        self.shutdown_hooks: list[Hook] = []
        self._broker: Broker | None = None
        self._tracer: Tracer | None = None  # of `send` spans, while running with telemetry on
        if isinstance(self.broker, str):
            _check_broker_url(self.broker, self.broker_options, settings)

    def __repr__(self) -> str:
        return f"App({self.name!r})"

    # -- configuration ---------------------------------------------------------------------

    @property
    def broker_url(self) -> str:
        """The broker URL in effect: `TASKFLOW_BROKER`, else the argument, else `memory://`."""
        if self.broker is not None and not isinstance(self.broker, str):
            return self.broker.url
        return self.broker or os.environ.get("TASKFLOW_BROKER") or DEFAULT_BROKER

    @property
    def running(self) -> bool:
        """True between startup and shutdown."""
        return self._broker is not None

    def worker_names(self) -> list[str]:
        """Every registered worker name, in registration order within each kind."""
        return [
            *(c.name for c in self.consumers),
            *(s.name for s in self.schedules),
            *(f.name for f in self.function_workers),
            *(w.name for w in self.workers),
        ]

    # -- registration ----------------------------------------------------------------------

    def add_consumer(
        self,
        handler: Callable[..., Any],
        *topics: str,
        group: str | None = None,
        name: str | None = None,
        ordering: Ordering = "partition",
        concurrency: int | None = None,
        timeout: float | None = None,
        retry: Backoff | None = None,
        max_attempts: int | None = None,
        dead_letter: str | None = None,
        reject_on: Sequence[type[BaseException]] = (),
        middleware: Sequence[MiddlewareFactory] = (),
        max_buffered: int = 1000,
        rate_limit: RateLimit | str | None = None,
        rate_limit_scope: RateLimitScope = "local",
        idempotent: bool | None = None,
        idempotency_key: IdempotencyKey | None = None,
        idempotency_lease: timedelta | float = DEFAULT_LEASE,
        idempotency_retention: timedelta | float = DEFAULT_RETENTION,
        on_store_error: OnStoreError = "fail",
    ) -> ConsumerSpec:
        """Register a consumer of `topics` in a consumer group.

        Args:
            handler: `async def` or `def` taking one payload parameter (Message, bytes, str,
                dict, list, a dataclass or a pydantic model) and optionally `ctx: Context`.
            *topics: One or more topics, consumed by one group.
            group: The consumer group; default the app name.
            name: The worker name; default the function name.
            ordering: "partition" (in order per partition), "key" (in order per key, keys
                concurrent within a partition) or "none".
            concurrency: Handlers running at once per partition in "key" and "none" modes
                (default 16).
            timeout: Seconds after which a handler is cancelled and counted as a failure.
            retry: The backoff between attempts of a failing message (default 1 s doubling to 30 s).
            max_attempts: Attempts before a failing message goes to `dead_letter` (default 5
                when `dead_letter` is set). Without a dead-letter topic a failing message is
                retried until it succeeds, so nothing is lost.
            dead_letter: A topic for messages that exhaust their attempts or are rejected.
            reject_on: Exception types that mean "reject": no retry, straight to the dead letters.
            middleware: Middleware for this consumer only, inside the app-wide middleware.
            max_buffered: Fetched records held per partition before it is paused.
            rate_limit: At most this many handler runs, e.g. ``"100/s"``, ``"30/m"`` or a
                `RateLimit`; smooth, with backpressure while waiting.
            rate_limit_scope: ``"local"`` (per process) or ``"global"`` (shared by every replica
                through Redis).
            idempotent: Run each message's handler to completion at most once, across
                replicas and redeliveries (default: the App's `idempotent`). Needs Redis or the
                App's `idempotency_store`.
            idempotency_key: A function of the Message giving its identity (str or bytes);
                default the `idempotency-key` header, else ``topic:partition:offset``. Keys are
                always scoped by the consumer group.
            idempotency_lease: How long a claim lasts unless renewed (renewed while the handler
                runs); a message claimed by a worker that died is run again after it.
            idempotency_retention: How long a done mark is kept (default 7 days).
            on_store_error: When the store fails: ``"fail"`` (do not run or commit; try again
                later) or ``"proceed"`` (run without a claim and log it).

        Returns:
            The registration.

        Raises:
            ConfigurationError: for any invalid option or a handler taskflow cannot call.
        """
        self._check_open()
        idempotent = _idempotent(idempotent, self.idempotent)
        spec = ConsumerSpec(
            name=self._new_name(handler_name(handler) if name is None else name),
            topics=_topics(topics),
            group=_group(self.name if group is None else group),
            func=handler,
            handler=consumer_handler(handler),
            ordering=_ordering(ordering),
            concurrency=_concurrency(ordering, concurrency),
            timeout=_timeout(timeout),
            retry=_retry(retry),
            max_attempts=_max_attempts(max_attempts, dead_letter),
            dead_letter=_dead_letter(dead_letter, topics),
            reject_on=_exception_types(reject_on),
            middleware=_middleware(middleware),
            max_buffered=_positive_int("max_buffered", max_buffered),
            rate_limit=None if rate_limit is None else parse_rate_limit(rate_limit),
            rate_limit_scope=_scope(rate_limit_scope, rate_limit),
            idempotent=idempotent,
            idempotency_key=_idempotency_key(idempotency_key, idempotent),
            idempotency_lease=_seconds("idempotency_lease", idempotency_lease),
            idempotency_retention=_seconds("idempotency_retention", idempotency_retention),
            on_store_error=_on_store_error(on_store_error),
        )
        self.consumers.append(spec)
        return spec

    def consume(self, *topics: str, **options: Any) -> Callable[[F], F]:
        """Decorator form of `add_consumer`; returns the function unchanged.

        Example:
            ```python
            @app.consume("orders", dead_letter="orders.DLQ")
            async def on_order(order: dict, ctx: Context) -> None: ...
            ```
        """

        def register(func: F) -> F:
            self.add_consumer(func, *topics, **options)
            return func

        return register

    def add_schedule(
        self,
        handler: Callable[..., Any],
        schedule: Schedule | timedelta | float | str,
        *,
        name: str | None = None,
        fleet: bool = True,
        catch_up: CatchUp = "none",
        grace: timedelta | float = DEFAULT_GRACE,
        lease: timedelta | float = DEFAULT_LEASE,
        run_at_start: bool = False,
        jitter: timedelta | float = 0,
        timeout: float | None = None,
        middleware: Sequence[MiddlewareFactory] = (),
        idempotent: bool | None = None,
        idempotency_lease: timedelta | float = DEFAULT_LEASE,
        idempotency_retention: timedelta | float = DEFAULT_RETENTION,
        on_store_error: OnStoreError = "fail",
    ) -> ScheduleSpec:
        """Register a periodic task.

        With Redis configured, each tick runs on exactly one replica of the fleet, and a run never
        overlaps another run of the task on any replica; see the scheduling guide.

        Args:
            handler: `async def` or `def` taking nothing or `ctx: Context`.
            schedule: A `Schedule` (such as a `Cron`), a cron expression in UTC, or a period
                (timedelta or seconds) on the epoch-aligned grid.
            name: The worker name; default the function name.
            fleet: With Redis, run each tick once across the fleet (the default); False runs it
                on every replica.
            catch_up: Ticks missed while every replica was down: ``"none"`` (the default),
                ``"latest"`` (run the last one) or ``"all"`` (run each, in order), at start.
            grace: How old a missed tick may be and still be caught up (default 1 hour).
            lease: Seconds a run's hold on the task lasts unless renewed (renewed every third
                of it while the run goes on); a replica that dies mid-run blocks the task for
                at most this long.
            run_at_start: Also run once as soon as the app starts (on each replica that starts).
            jitter: Delay each run by a random amount up to this (less than the period), so
                replicas do not all fire at once; the grid itself never moves.
            timeout: Seconds after which a run is cancelled and logged as failed.
            middleware: Middleware for this task only, inside the app-wide middleware.
            idempotent: Run each scheduled tick at most once, across replicas (default: the
                App's `idempotent`); keyed on the task's name and the tick.
            idempotency_lease: How long a claim on a tick lasts unless renewed.
            idempotency_retention: How long a done tick is remembered (default 7 days).
            on_store_error: When the store fails: ``"fail"`` (skip the run, logged as failed)
                or ``"proceed"`` (run without a claim and log it).

        Raises:
            ConfigurationError: for any invalid option or a handler taskflow cannot call.
        """
        self._check_open()
        name = self._new_name(handler_name(handler) if name is None else name)
        if isinstance(schedule, str):
            schedule = Cron(schedule, hash_id=f"{self.name}:{name}")
        elif not isinstance(schedule, Schedule):
            schedule = interval(schedule)
        if not isinstance(run_at_start, bool):
            raise ConfigurationError(f"run_at_start is True or False, got {run_at_start!r}")
        fleet = _flag("fleet", fleet)
        spec = ScheduleSpec(
            name=name,
            schedule=schedule,
            func=handler,
            handler=periodic_handler(handler),
            run_at_start=run_at_start,
            jitter=_jitter(jitter, schedule),
            timeout=_timeout(timeout),
            middleware=_middleware(middleware),
            idempotent=_idempotent(idempotent, self.idempotent),
            idempotency_lease=_seconds("idempotency_lease", idempotency_lease),
            idempotency_retention=_seconds("idempotency_retention", idempotency_retention),
            on_store_error=_on_store_error(on_store_error),
            fleet=fleet,
            catch_up=_catch_up(catch_up, fleet),
            grace=_seconds("grace", grace),
            lease=_seconds("lease", lease),
        )
        self.schedules.append(spec)
        return spec

    def every(
        self,
        every: timedelta | float | None = None,
        *,
        seconds: float = 0,
        minutes: float = 0,
        hours: float = 0,
        days: float = 0,
        **options: Any,
    ) -> Callable[[F], F]:
        """Decorator: run the function periodically on the epoch-aligned grid.

        The options are those of `add_schedule`.

        Example:
            ```python
            @app.every(minutes=5, jitter=10)
            async def cleanup(ctx: Context) -> None: ...
            ```
        """
        schedule = interval(every, seconds=seconds, minutes=minutes, hours=hours, days=days)

        def register(func: F) -> F:
            self.add_schedule(func, schedule, **options)
            return func

        return register

    def cron(
        self, expr: str, *, tz: str | tzinfo = "UTC", hash_id: str | None = None, **options: Any
    ) -> Callable[[F], F]:
        """Decorator: run the function at the times a cron expression names, in time zone `tz`.

        The expression and time zone are checked here. The options are those of `add_schedule`;
        see `Cron` for the syntax and the behaviour across DST changes.

        Args:
            expr: A cron expression: five fields, a sixth for seconds, a seventh for the year.
            tz: An IANA time zone name (or a tzinfo); default UTC.
            hash_id: What ``H`` in the expression hashes; default ``app:task``.

        Example:
            ```python
            @app.cron("*/5 * * * *", tz="Europe/Berlin")
            async def report(ctx: Context) -> None: ...
            ```
        """
        Cron(expr, tz=tz, hash_id=hash_id or self.name)  # refuse a bad expression or zone now

        def register(func: F) -> F:
            task = options.get("name") or handler_name(func)
            schedule = Cron(expr, tz=tz, hash_id=hash_id or f"{self.name}:{task}")
            self.add_schedule(func, schedule, **options)
            return func

        return register

    def add_worker(self, worker: Worker) -> Worker:
        """Register a custom worker: any object with `name`, `async start()` and `async stop()`."""
        self._check_open()
        if not isinstance(worker, Worker):
            raise ConfigurationError(
                f"{worker!r} is not a worker: it needs a name, async start() and async stop()"
            )
        self._new_name(worker.name)
        self.workers.append(worker)
        return worker

    def worker(self, func: F) -> F:
        """Decorator: run an `async def f(ctx)` as a worker for the app's lifetime.

        It should return when `ctx.stopping` is set. If it raises, it is restarted with backoff.
        """
        self._check_open()
        if not inspect.iscoroutinefunction(func):
            raise ConfigurationError(f"@app.worker needs an async def, got {func!r}")
        self.function_workers.append(FunctionWorkerSpec(self._new_name(handler_name(func)), func))
        return func

    def on_startup(self, func: F) -> F:
        """Register an async function to run before workers start (after the broker connects)."""
        self._check_open()
        _check_hook("on_startup", func)
        self.startup_hooks.append(func)
        return func

    def on_shutdown(self, func: F) -> F:
        """Register an async function to run after workers stop (before the broker closes)."""
        self._check_open()
        _check_hook("on_shutdown", func)
        self.shutdown_hooks.append(func)
        return func

    # -- running ---------------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        value: Any,
        *,
        key: bytes | str | None = None,
        headers: Mapping[str, str | bytes] | Sequence[tuple[str, bytes]] | None = None,
    ) -> None:
        """Publish a message and wait until the broker has it.

        Args:
            topic: The topic.
            value: bytes, str (UTF-8), or anything JSON-serialisable (dataclasses and pydantic
                models included).
            key: The message key; messages with one key go to one partition, in order.
            headers: Header names and values (str or bytes).

        With a tracer provider set up (see docs/observability.md), a `send {topic}` span of kind
        PRODUCER covers the publish and the headers carry its context; otherwise they carry the
        current span's context, if any.

        Raises:
            StateError: when the app is not running.
            PublishError: when the value cannot be encoded or the broker refuses it.
        """
        broker = self._broker
        if broker is None:
            raise StateError(
                f"app {self.name!r} is not running: publish from a handler, a startup hook, "
                "or inside `async with TestClient(app)`"
            )
        payload, raw_key = encode_value(value), encode_key(key)
        raw_headers = encode_headers(headers)
        if self._tracer is not None:
            await traced_publish(
                self._tracer, broker, topic, payload, key=raw_key, headers=raw_headers
            )
            return
        await broker.publish(topic, payload, key=raw_key, headers=with_trace_context(raw_headers))

    def attach(self, broker: Broker | None) -> None:
        """Set (or clear) the running broker. Called by the runner, not by users.

        Whether `publish` opens spans is decided here, once, as for the consumers' telemetry.
        """
        self._broker = broker
        self._tracer = publish_tracer(self.tracer_provider) if broker is not None else None

    @asynccontextmanager
    async def lifespan_context(self) -> AsyncIterator[None]:
        """Run the lifespan and the startup hooks; on exit the shutdown hooks and lifespan exit."""
        if self.lifespan is None:
            await _run_hooks(self.startup_hooks)
            try:
                yield
            finally:
                await _run_hooks(self.shutdown_hooks)
            return
        async with self.lifespan(self):
            await _run_hooks(self.startup_hooks)
            try:
                yield
            finally:
                await _run_hooks(self.shutdown_hooks)

    # -- helpers ---------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.running:
            raise StateError(f"app {self.name!r} is running: register everything before it starts")

    def _new_name(self, name: str) -> str:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"a worker name is a non-empty string, got {name!r}")
        if name in self.worker_names():
            raise ConfigurationError(
                f"a worker named {name!r} is already registered; pass name= to tell them apart"
            )
        return name


async def _run_hooks(hooks: Sequence[Hook]) -> None:
    for hook in hooks:
        await hook()


def _check_broker_url(url: str, options: Mapping[str, Any], settings: Settings) -> None:
    """Refuse a bad broker URL or option now, saying which variable gave it if one did."""
    from taskflow.brokers import broker_from_url

    try:
        broker_from_url(url, options)
    except ConfigurationError as exc:
        if settings.sources.get("broker") == "env":
            raise ConfigurationError(f"TASKFLOW_BROKER: {exc}") from exc
        raise


def _kafka_options(environ: Mapping[str, str]) -> Mapping[str, Any]:
    """The `TASKFLOW_KAFKA_<OPTION>` variables as typed aiokafka options (Kafka apps only)."""
    from taskflow.brokers.kafka import kafka_options_from_env

    return kafka_options_from_env(environ)


def _positive_int(option: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{option} must be a whole number >= 1, got {value!r}")
    return value


def _topics(topics: Sequence[str]) -> tuple[str, ...]:
    if not topics:
        raise ConfigurationError("a consumer needs at least one topic: @app.consume('orders')")
    for topic in topics:
        if not _is_topic(topic):
            raise ConfigurationError(
                f"a topic name uses letters, digits, '.', '_' and '-' (at most {_MAX_TOPIC}, "
                f"not '.' or '..'), got {topic!r}"
            )
    if len(set(topics)) != len(topics):
        raise ConfigurationError(f"a topic is listed twice in {list(topics)}")
    return tuple(topics)


def _group(group: str) -> str:
    if not isinstance(group, str) or not group:
        raise ConfigurationError(f"a consumer group is a non-empty string, got {group!r}")
    return group


def _is_topic(topic: object) -> bool:
    return (
        isinstance(topic, str)
        and _NAME.fullmatch(topic) is not None
        and len(topic) <= _MAX_TOPIC
        and topic not in (".", "..")
    )


def _retry(retry: Backoff | None) -> Backoff:
    if retry is None:
        return Backoff()
    if not isinstance(retry, Backoff):
        raise ConfigurationError(f"retry is a Backoff, got {retry!r}")
    return retry


def _middleware(middleware: Sequence[MiddlewareFactory]) -> tuple[MiddlewareFactory, ...]:
    if not isinstance(middleware, Iterable):
        raise ConfigurationError(f"middleware is a sequence of middleware, got {middleware!r}")
    factories = tuple(middleware)
    for factory in factories:
        if not callable(factory):
            raise ConfigurationError(f"middleware {factory!r} is not callable")
    return factories


def _check_hook(kind: str, func: object) -> None:
    if not inspect.iscoroutinefunction(func):
        raise ConfigurationError(f"@app.{kind} needs an async def, got {func!r}")


def _ordering(ordering: str) -> Ordering:
    if ordering not in _ORDERINGS:
        raise ConfigurationError(f"ordering is one of {', '.join(_ORDERINGS)}; got {ordering!r}")
    return ordering  # type: ignore[return-value]


def _concurrency(ordering: str, concurrency: int | None) -> int:
    if concurrency is None:
        return 1 if ordering == "partition" else 16
    if ordering == "partition" and concurrency != 1:
        raise ConfigurationError(
            "concurrency applies to ordering='key' or 'none'; in 'partition' mode each partition "
            "runs one handler at a time and partitions run concurrently"
        )
    return _positive_int("concurrency", concurrency)


def _timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ConfigurationError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)


def _max_attempts(max_attempts: int | None, dead_letter: str | None) -> int | None:
    if max_attempts is None:
        return 5 if dead_letter else None
    if dead_letter is None:
        raise ConfigurationError(
            "max_attempts needs dead_letter=: without a dead-letter topic a failing message is "
            "retried until it succeeds, so nothing is lost (raise Reject to skip one on purpose)"
        )
    return _positive_int("max_attempts", max_attempts)


def _dead_letter(dead_letter: str | None, topics: Sequence[str]) -> str | None:
    if dead_letter is None:
        return None
    if not _is_topic(dead_letter):
        raise ConfigurationError(f"dead_letter is a topic name, got {dead_letter!r}")
    if dead_letter in topics:
        raise ConfigurationError(f"the dead-letter topic {dead_letter!r} is also consumed here")
    return dead_letter


def _exception_types(types: Sequence[type[BaseException]]) -> tuple[type[BaseException], ...]:
    if isinstance(types, type) or not isinstance(types, Iterable):
        raise ConfigurationError(f"reject_on takes a sequence of exception classes, got {types!r}")
    for kind in types:
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            raise ConfigurationError(f"reject_on takes exception classes, got {kind!r}")
    return tuple(types)


def _jitter(jitter: timedelta | float, schedule: Schedule) -> timedelta:
    if isinstance(jitter, bool) or not isinstance(jitter, timedelta | int | float):
        raise ConfigurationError(f"jitter is a timedelta or seconds, got {jitter!r}")
    try:
        value = jitter if isinstance(jitter, timedelta) else timedelta(seconds=jitter)
    except (ValueError, OverflowError):  # NaN or infinity
        raise ConfigurationError(f"jitter is a finite number of seconds, got {jitter!r}") from None
    if value < timedelta(0):
        raise ConfigurationError(f"jitter cannot be negative, got {value}")
    period = getattr(schedule, "period", None)
    if isinstance(period, timedelta) and value >= period:
        raise ConfigurationError(f"jitter ({value}) must be shorter than the period ({period})")
    return value


def _scope(scope: str, limit: RateLimit | str | None) -> RateLimitScope:
    if scope not in ("local", "global"):
        raise ConfigurationError(f"rate_limit_scope is 'local' or 'global', got {scope!r}")
    if scope == "global" and limit is None:
        raise ConfigurationError("rate_limit_scope='global' needs a rate_limit= to share")
    return scope  # type: ignore[return-value]


def _idempotent(value: bool | None, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigurationError(f"idempotent is True or False, got {value!r}")
    return value


def _idempotency_key(key: IdempotencyKey | None, idempotent: bool) -> IdempotencyKey | None:
    if key is None:
        return None
    if not callable(key):
        raise ConfigurationError(
            f"idempotency_key is a function taking the Message and returning its key, got {key!r}"
        )
    if not idempotent:
        raise ConfigurationError("idempotency_key= needs idempotent=True (here or on the App)")
    return key


def _idempotency_store(store: IdempotencyStore | None) -> IdempotencyStore | None:
    if store is not None and not isinstance(store, IdempotencyStore):
        raise ConfigurationError(
            f"idempotency_store needs async claim, complete, release, extend and remaining, "
            f"as MemoryIdempotencyStore has; got {store!r}"
        )
    return store


def _seconds(option: str, value: timedelta | float) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 < seconds < float("inf")
    ):
        raise ConfigurationError(f"{option} must be a positive number of seconds, got {value!r}")
    return float(seconds)


def _flag(option: str, value: bool) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(f"{option} is True or False, got {value!r}")
    return value


def _catch_up(value: str, fleet: bool) -> CatchUp:
    if value not in ("none", "latest", "all"):
        raise ConfigurationError(f"catch_up is 'none', 'latest' or 'all', got {value!r}")
    if value != "none" and not fleet:
        raise ConfigurationError(
            "catch_up= needs fleet=True: the fleet's records in Redis tell which ticks were missed"
        )
    return value  # type: ignore[return-value]


def _on_store_error(value: str) -> OnStoreError:
    if value not in ("fail", "proceed"):
        raise ConfigurationError(f"on_store_error is 'fail' or 'proceed', got {value!r}")
    return value  # type: ignore[return-value]
