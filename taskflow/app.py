"""The App: what a service registers (consumers, periodic tasks, workers, lifespan) and publishes.

Everything is done by an `add_*` method; the decorators (`consume`, `every`, `cron`, `worker`,
`on_startup`, `on_shutdown`) are sugar over them and return the function unchanged. The App holds
registrations only; `taskflow.runner` builds the workers from them and runs them under a Manager.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import timedelta, tzinfo
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from taskflow import validation as check
from taskflow.backoff import Backoff
from taskflow.clock import Clock, SystemClock
from taskflow.codec import JSON, Codecs, decoder_for, encode_headers, encode_key, encode_record
from taskflow.config import DEFAULT_BROKER, Settings
from taskflow.deliveries import Deliveries
from taskflow.exceptions import ConfigurationError, PublishError, StateError
from taskflow.handler import batch_handler, consumer_handler, handler_name, periodic_handler
from taskflow.ratelimit import RateLimit
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
    Start,
)
from taskflow.stores.base import IdempotencyStore
from taskflow.telemetry.tracing import (
    publish_tracer,
    traced_enqueue,
    traced_publish,
    with_trace_context,
)
from taskflow.topic import Topic, topic_name
from taskflow.types import Codec, Worker

if TYPE_CHECKING:
    from opentelemetry.trace import Tracer

    from taskflow.brokers.base import Broker
    from taskflow.message import Headers

__all__ = ["App", "Lifespan", "State"]

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
Lifespan = Callable[["App"], AbstractAsyncContextManager[None]]
Hook = Callable[[], Awaitable[None]]


class State:
    """An attribute namespace for resources opened at startup, shared by every handler.

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


class _Option(Generic[T]):
    """An App attribute that reads its option from `app.settings`.

    Setting it is code that runs after the App was made (`app.redis_url = ...` in a factory): the
    code's last word over the environment, through `Settings.with_code`.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, app: None, owner: type) -> _Option[T]: ...
    @overload
    def __get__(self, app: App, owner: type) -> T: ...
    def __get__(self, app: App | None, owner: type) -> _Option[T] | T:
        if app is None:
            return self
        return cast(T, getattr(app.settings, self.name))

    def __set__(self, app: App, value: T) -> None:
        app.settings = app.settings.with_code({self.name: value})


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
        buffer_bytes: The memory budget of fetched records for the whole process, over every
            consumer and partition: bytes (an int) or a size such as ``"256MiB"``; default
            64 MiB. Fetching pauses when it is spent and resumes as records finish. See
            [Memory](../consuming.md#memory).
        clock: Where periodic tasks read the time; tests pass a
            [ManualClock][taskflow.testing.ManualClock].
        tracer_provider: The OpenTelemetry TracerProvider for spans; default the global one.
        meter_provider: The OpenTelemetry MeterProvider for metrics; default the global one.
        idempotent: The default of `idempotent=` for every consumer and periodic task (default
            False).
        idempotency_store: Where idempotency claims live instead of Redis, e.g.
            `MemoryIdempotencyStore()` for tests and single-process dev.
        http_port: Serve /healthz, /readyz, /metrics and /status on this TCP port while the app
            runs (0 picks a free one); default no endpoint.
        http_host: The address the operations endpoint listens on (default ``0.0.0.0``, every
            interface; ``127.0.0.1`` keeps it inside the host).
        instance_id: This replica's stable name, such as its pod name, for Kafka's static group
            membership: each consumer joins its group as ``<instance_id>.<worker name>``, so a
            replica restarted within the session timeout gets its partitions back without a
            rebalance. Letters, digits, `.`, `_`, `-`; default none (dynamic membership). See
            [Deployment](../deployment.md#rolling-deploys-without-rebalances).
        codec: How payloads are written and, unless a consumer names its own, read: a
            [Codec][taskflow.Codec]; default JSON. See [Payloads and codecs](../payloads.md).
        codecs: Further codecs whose records consumers read when a record's ``content-type``
            header names them (JSON and MessagePack are always read).
        version: The version of the app's contract, shown in its AsyncAPI document.
        description: What the app does, shown in its AsyncAPI document.

    Each option that can be written as text also comes from a `TASKFLOW_*` environment variable,
    which wins over the argument (`TASKFLOW_BROKER`, `TASKFLOW_KAFKA_<OPTION>`,
    `TASKFLOW_REDIS_URL`, `TASKFLOW_SHUTDOWN_TIMEOUT`, `TASKFLOW_COMMIT_INTERVAL`,
    `TASKFLOW_BUFFER_BYTES`, `TASKFLOW_IDEMPOTENT`, `TASKFLOW_HTTP_PORT`, `TASKFLOW_HTTP_HOST`,
    `TASKFLOW_INSTANCE_ID`); a `taskflow` flag wins over both. `settings` holds the values in
    effect and where each came from; `app.redis_url` and the other options' attributes read it,
    and setting one is the code's last word over the environment. See
    [Configuration](../configuration.md).

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
        buffer_bytes: int | str | None = None,
        clock: Clock | None = None,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        idempotent: bool | None = None,
        idempotency_store: IdempotencyStore | None = None,
        http_port: int | None = None,
        http_host: str | None = None,
        instance_id: str | None = None,
        codec: Codec | None = None,
        codecs: Sequence[Codec] = (),
        version: str | None = None,
        description: str | None = None,
    ) -> None:
        self.name = check.app_name(name)
        self.version = check.text("version", version)
        self.description = check.text("description", description)
        self.settings = Settings.resolve(
            {
                "broker": broker,
                "broker_options": broker_options,
                "redis_url": redis_url,
                "shutdown_timeout": shutdown_timeout,
                "commit_interval": commit_interval,
                "buffer_bytes": buffer_bytes,
                "idempotent": idempotent,
                "http_port": http_port,
                "http_host": http_host,
                "instance_id": instance_id,
            },
            kafka_parser=_kafka_options,
        )
        self.lifespan = lifespan
        self.middleware = check.middleware(middleware)
        self.clock: Clock = clock or SystemClock()
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.idempotency_store = check.idempotency_store(idempotency_store)
        self.state = State()
        self.codecs = Codecs(codecs)  # the content types consumers read
        self.codec: Codec = JSON if codec is None else self.codecs.add(codec)
        self.consumers: list[ConsumerSpec] = []
        self.topics: list[Topic[Any]] = []  # declared with `topic`, in declaration order
        self.schedules: list[ScheduleSpec] = []
        self.function_workers: list[FunctionWorkerSpec] = []
        self.workers: list[Worker] = []
        self.startup_hooks: list[Hook] = []
        self.shutdown_hooks: list[Hook] = []
        self._broker: Broker | None = None
        self._tracer: Tracer | None = None  # of `send` spans, while running with telemetry on
        self._deliveries = Deliveries()  # what `publish(..., wait=False)` queued

    def __repr__(self) -> str:
        return f"App({self.name!r})"

    # -- configuration ---------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The options in effect and where each came from: the one value every part of taskflow
        reads them from.

        Made from the arguments and the `TASKFLOW_*` variables when the App is made; `taskflow`
        puts its flags over it before the app runs. Setting it checks that a broker can be built
        from its broker URL and options.
        """
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        check.broker_url(settings)
        self._settings = settings

    broker = _Option["str | Broker | None"]()
    broker_options = _Option[Mapping[str, Any]]()
    redis_url = _Option["str | None"]()
    shutdown_timeout = _Option[float]()
    commit_interval = _Option[float]()
    buffer_bytes = _Option[int]()
    idempotent = _Option[bool]()
    http_port = _Option["int | None"]()
    http_host = _Option[str]()
    instance_id = _Option["str | None"]()

    @property
    def broker_url(self) -> str:
        """The broker URL in effect: the Broker object's, else `settings.broker`, else `memory://`."""
        broker = self._settings.broker
        if broker is not None and not isinstance(broker, str):
            return str(broker.url)
        return broker or DEFAULT_BROKER

    @property
    def running(self) -> bool:
        """True between startup and shutdown."""
        return self._broker is not None

    def worker_names(self) -> list[str]:
        """Every registered worker name, in registration order within each kind."""
        return [
            *(c.name for c in self.consumers),
            *(f"{c.name}.retry" for c in self.consumers if c.retry_topics is not None),
            *(s.name for s in self.schedules),
            *(f.name for f in self.function_workers),
            *(w.name for w in self.workers),
        ]

    # -- registration ----------------------------------------------------------------------

    def add_consumer(
        self,
        handler: Callable[..., Any],
        *topics: str | Topic[Any],
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
        start: Start | None = None,
        consumer_options: Mapping[str, Any] | None = None,
        batch: int | None = None,
        batch_wait: timedelta | float | None = None,
        retry_topics: Sequence[timedelta | float] | None = None,
        codec: Codec | None = None,
    ) -> ConsumerSpec:
        """Register a consumer of `topics` in a consumer group.

        Args:
            handler: `async def` or `def` taking one payload parameter (Message, bytes, str,
                dict, list, a dataclass or a pydantic model) and optionally `ctx: Context`.
            *topics: One or more topics (names, or `Topic`s declared with `topic`), consumed
                by one group.
            group: The consumer group; default the app name.
            name: The worker name; default the function name.
            ordering: "partition" (in order per partition), "key" (in order per key, keys
                concurrent within a partition) or "none".
            concurrency: Handlers running at once per partition in "key" and "none" modes
                (default 16); with `batch` in "none" mode, batches running at once for the
                consumer.
            timeout: Seconds after which a handler is cancelled and counted as a failure.
            retry: The backoff between attempts of a failing message (default 1 s doubling to 30 s).
            max_attempts: Attempts before a failing message goes to `dead_letter` (default 5
                when `dead_letter` is set). Without a dead-letter topic a failing message is
                retried until it succeeds, so nothing is lost. Not with `retry_topics`.
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
            start: Where the group begins a partition it has no committed offset for:
                ``"earliest"`` (every record still kept) or ``"latest"`` (only records written
                from now on). Default: the broker option ``auto_offset_reset`` if set, else
                ``"earliest"``. A committed offset always wins.
            consumer_options: Kafka consumer options for this registration only (any aiokafka
                consumer option taskflow does not set itself: ``isolation_level``,
                ``max_partition_fetch_bytes``, ``session_timeout_ms``, …), over the App's
                `broker_options` and ``TASKFLOW_KAFKA_*`` variables. The memory broker ignores
                them.
            batch: Call the handler with up to this many records at once: it then takes
                ``list[T]`` (or ``Sequence[T]``), T any payload type above. Works with
                ordering "partition" (a batch holds one partition's records, in order) and
                "none" (records of several partitions; `concurrency` batches run at once).
                Retries, timeouts, rate limits (one token per record) and idempotency apply to
                the batch; raise `BatchError` to say which record failed. See "Batches" in
                the consuming guide.
            batch_wait: Seconds the oldest waiting record waits for its batch to fill while its
                partition is behind (default 0.1; 0 never waits). A partition that is caught
                up sends what waits at once. Needs `batch`.
            retry_topics: Retry without holding the partition: delays (seconds or timedeltas,
                e.g. ``[10, 60, 600]``), one per retry stage. A failing message is committed
                and published to the first stage's topic (``<topic>.retry.10s``; ``500ms``
                for a delay that is not whole seconds), run there once its delay has passed
                by a second worker, ``<name>.retry`` in group ``<group>.retry``, then sent to
                the next stage, and after the last to `dead_letter` (needed). Each stage is one
                attempt (`ctx.attempt` counts across them), so not with `max_attempts`; not
                with `batch`. Retried messages lose their order. See "Retry topics" in the
                consuming guide.
            codec: How this consumer reads payloads (default the App's `codec`): a record whose
                ``content-type`` header names another codec of the app is read with that one.
                See [Payloads and codecs](../payloads.md).

        Returns:
            The registration.

        Raises:
            ConfigurationError: for any invalid option or a handler taskflow cannot call.
        """
        self._check_open()
        idempotent = check.idempotent(idempotent, self.idempotent)
        name = self._new_name(handler_name(handler) if name is None else name)
        names = check.topics(tuple(topic_name(topic) for topic in topics))
        group = check.group(self.name if group is None else group)
        check.no_overlap(self.consumers, name, names, group)
        max_buffered = check.positive_int("max_buffered", max_buffered)
        batch = check.batch(batch, check.ordering(ordering), max_buffered)
        stages = check.retry_topics(
            retry_topics,
            topics=names,
            dead_letter=dead_letter,
            max_attempts=max_attempts,
            batch=batch,
        )
        if stages is not None:
            self._new_name(f"{name}.retry")
        decoders = self._decoders(codec)
        adapted, decode = (
            batch_handler(handler, decoders)
            if batch is not None
            else (consumer_handler(handler, decoders), None)
        )
        spec = ConsumerSpec(
            name=name,
            topics=names,
            group=group,
            func=handler,
            handler=adapted,
            ordering=check.ordering(ordering),
            concurrency=check.concurrency(ordering, concurrency),
            timeout=check.timeout(timeout),
            retry=check.retry(retry),
            max_attempts=None if stages else check.max_attempts(max_attempts, dead_letter),
            dead_letter=check.dead_letter(dead_letter, names),
            reject_on=check.reject_on(reject_on),
            middleware=check.middleware(middleware),
            max_buffered=max_buffered,
            rate_limit=check.rate_limit(rate_limit),
            rate_limit_scope=check.rate_limit_scope(rate_limit_scope, rate_limit),
            idempotent=idempotent,
            idempotency_key=check.idempotency_key(idempotency_key, idempotent),
            idempotency_lease=check.seconds("idempotency_lease", idempotency_lease),
            idempotency_retention=check.seconds("idempotency_retention", idempotency_retention),
            on_store_error=check.on_store_error(on_store_error),
            start=check.start(start),
            consumer_options=check.consumer_options(consumer_options),
            batch=batch,
            batch_wait=check.batch_wait(batch_wait, batch),
            batch_decode=decode,
            retry_topics=stages,
            codec=codec,
        )
        self.consumers.append(spec)
        return spec

    def _decoders(self, codec: Codec | None) -> Callable[[Any], Any]:
        """The payload decoders of a registration with `codec` (None: the App's)."""
        if codec is not None:
            self.codecs.add(codec)
        return functools.partial(decoder_for, codec=codec or self.codec, codecs=self.codecs)

    def consume(
        self,
        *topics: str | Topic[Any],
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
        start: Start | None = None,
        consumer_options: Mapping[str, Any] | None = None,
        batch: int | None = None,
        batch_wait: timedelta | float | None = None,
        retry_topics: Sequence[timedelta | float] | None = None,
        codec: Codec | None = None,
    ) -> Callable[[F], F]:
        """Decorator: consume `topics` with the function; returns the function unchanged.

        The topics and options are those of [`add_consumer`][taskflow.App.add_consumer], with
        the same defaults and meaning.

        Example:
            ```python
            @app.consume("orders", dead_letter="orders.DLQ")
            async def on_order(order: dict, ctx: Context) -> None: ...
            ```
        """

        def register(func: F) -> F:
            self.add_consumer(
                func,
                *topics,
                group=group,
                name=name,
                ordering=ordering,
                concurrency=concurrency,
                timeout=timeout,
                retry=retry,
                max_attempts=max_attempts,
                dead_letter=dead_letter,
                reject_on=reject_on,
                middleware=middleware,
                max_buffered=max_buffered,
                rate_limit=rate_limit,
                rate_limit_scope=rate_limit_scope,
                idempotent=idempotent,
                idempotency_key=idempotency_key,
                idempotency_lease=idempotency_lease,
                idempotency_retention=idempotency_retention,
                on_store_error=on_store_error,
                start=start,
                consumer_options=consumer_options,
                batch=batch,
                batch_wait=batch_wait,
                retry_topics=retry_topics,
                codec=codec,
            )
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
        overlaps another run of the task on any replica; see
        [Scheduling](../scheduling.md#across-a-fleet-once-per-tick).

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
        schedule = check.schedule(schedule, hash_id=f"{self.name}:{name}")
        run_at_start = check.flag("run_at_start", run_at_start)
        fleet = check.flag("fleet", fleet)
        spec = ScheduleSpec(
            name=name,
            schedule=schedule,
            func=handler,
            handler=periodic_handler(handler),
            run_at_start=run_at_start,
            jitter=check.jitter(jitter, schedule),
            timeout=check.timeout(timeout),
            middleware=check.middleware(middleware),
            idempotent=check.idempotent(idempotent, self.idempotent),
            idempotency_lease=check.seconds("idempotency_lease", idempotency_lease),
            idempotency_retention=check.seconds("idempotency_retention", idempotency_retention),
            on_store_error=check.on_store_error(on_store_error),
            fleet=fleet,
            catch_up=check.catch_up(catch_up, fleet),
            grace=check.seconds("grace", grace),
            lease=check.seconds("lease", lease),
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
    ) -> Callable[[F], F]:
        """Decorator: run the function periodically on the epoch-aligned grid.

        The period is checked here. The other options are those of
        [`add_schedule`][taskflow.App.add_schedule], with the same defaults and meaning.

        Args:
            every: The period, as a timedelta or seconds; or give it with the unit keywords.
            seconds: Seconds of the period, added to the other units.
            minutes: Minutes of the period.
            hours: Hours of the period.
            days: Days of the period.

        Example:
            ```python
            @app.every(minutes=5, jitter=10)
            async def cleanup(ctx: Context) -> None: ...
            ```
        """
        schedule = interval(every, seconds=seconds, minutes=minutes, hours=hours, days=days)

        def register(func: F) -> F:
            self.add_schedule(
                func,
                schedule,
                name=name,
                fleet=fleet,
                catch_up=catch_up,
                grace=grace,
                lease=lease,
                run_at_start=run_at_start,
                jitter=jitter,
                timeout=timeout,
                middleware=middleware,
                idempotent=idempotent,
                idempotency_lease=idempotency_lease,
                idempotency_retention=idempotency_retention,
                on_store_error=on_store_error,
            )
            return func

        return register

    def cron(
        self,
        expr: str,
        *,
        tz: str | tzinfo = "UTC",
        hash_id: str | None = None,
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
    ) -> Callable[[F], F]:
        """Decorator: run the function at the times a cron expression names, in time zone `tz`.

        The expression and time zone are checked here. The other options are those of
        [`add_schedule`][taskflow.App.add_schedule], with the same defaults and meaning; see
        [`Cron`][taskflow.Cron] for the syntax and the behaviour across DST changes.

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
            task = name or handler_name(func)
            schedule = Cron(expr, tz=tz, hash_id=hash_id or f"{self.name}:{task}")
            self.add_schedule(
                func,
                schedule,
                name=name,
                fleet=fleet,
                catch_up=catch_up,
                grace=grace,
                lease=lease,
                run_at_start=run_at_start,
                jitter=jitter,
                timeout=timeout,
                middleware=middleware,
                idempotent=idempotent,
                idempotency_lease=idempotency_lease,
                idempotency_retention=idempotency_retention,
                on_store_error=on_store_error,
            )
            return func

        return register

    def add_worker(self, worker: Worker) -> Worker:
        """Register a custom worker: any object with `name`, `async start()` and `async stop()`."""
        self._check_open()
        self._new_name(check.worker(worker).name)
        self.workers.append(worker)
        return worker

    def worker(self, func: F) -> F:
        """Decorator: run an `async def f(ctx)` as a worker for the app's lifetime.

        It should return when `ctx.stopping` is set. If it raises, it is restarted with backoff.
        """
        self._check_open()
        check.function_worker(func)
        self.function_workers.append(FunctionWorkerSpec(self._new_name(handler_name(func)), func))
        return func

    def on_startup(self, func: F) -> F:
        """Register an async function to run before workers start (after the broker connects)."""
        self._check_open()
        check.hook("on_startup", func)
        self.startup_hooks.append(func)
        return func

    def on_shutdown(self, func: F) -> F:
        """Register an async function to run after workers stop (before the broker closes)."""
        self._check_open()
        check.hook("on_shutdown", func)
        self.shutdown_hooks.append(func)
        return func

    @overload
    def topic(
        self,
        name: str,
        payload: type[T],
        *,
        key: type[str] | type[bytes] | None = None,
        description: str | None = None,
        codec: Codec | None = None,
    ) -> Topic[T]: ...
    @overload
    def topic(
        self,
        name: str,
        *,
        key: type[str] | type[bytes] | None = None,
        description: str | None = None,
        codec: Codec | None = None,
    ) -> Topic[Any]: ...
    def topic(
        self,
        name: str,
        payload: Any = Any,
        *,
        key: type[str] | type[bytes] | None = None,
        description: str | None = None,
        codec: Codec | None = None,
    ) -> Topic[Any]:
        """Declare a topic the app publishes to, with the type of its payloads.

        The returned `Topic` publishes (``await orders.publish(order)``, or
        ``ctx.publish(orders, order)``) with the payload type-checked by mypy and, at run time,
        refused when it is not of `payload`; `consume` takes it as it takes a name. The app's
        AsyncAPI document shows it as a ``send`` operation. See [AsyncAPI](../asyncapi.md).

        Args:
            name: The topic.
            payload: What its records carry: a dataclass, msgspec Struct or pydantic model,
                ``dict``, ``list`` (or a parametrised ``dict[str, int]``), ``bytes`` or ``str``;
                default anything.
            key: The type of its message keys, ``str`` or ``bytes``; default undeclared.
            description: What the topic carries, for the AsyncAPI document.
            codec: How its values are encoded (default the App's `codec`).

        Returns:
            The topic's handle.

        Raises:
            ConfigurationError: for a bad name or option, or a topic declared twice.
        """
        self._check_open()
        declared: Topic[Any] = Topic(
            name,
            payload,
            key=key,
            description=check.text("description", description),
            codec=codec if codec is None else self.codecs.add(codec),
            app=self,
        )
        if any(known.name == name for known in self.topics):
            raise ConfigurationError(f"topic {name!r} is already declared with app.topic")
        self.topics.append(declared)
        return declared

    # -- running ---------------------------------------------------------------------------

    @overload
    async def publish(
        self,
        topic: Topic[T],
        value: T | None,
        *,
        key: bytes | str | None = None,
        headers: Mapping[str, str | bytes] | Sequence[tuple[str, bytes]] | None = None,
        wait: bool = True,
        codec: Codec | None = None,
    ) -> None: ...
    @overload
    async def publish(
        self,
        topic: str,
        value: Any,
        *,
        key: bytes | str | None = None,
        headers: Mapping[str, str | bytes] | Sequence[tuple[str, bytes]] | None = None,
        wait: bool = True,
        codec: Codec | None = None,
    ) -> None: ...
    async def publish(
        self,
        topic: str | Topic[Any],
        value: Any,
        *,
        key: bytes | str | None = None,
        headers: Mapping[str, str | bytes] | Sequence[tuple[str, bytes]] | None = None,
        wait: bool = True,
        codec: Codec | None = None,
    ) -> None:
        """Publish a message and, by default, wait until the broker has it.

        Args:
            topic: The topic: its name, or a `Topic` declared with `topic` (whose payload and
                key types the value and key must have).
            value: bytes, str (UTF-8), or any value the codec encodes (with JSON, the default:
                anything JSON-serialisable, dataclasses, msgspec Structs and pydantic models
                included); None publishes a tombstone, a record with a null value (to
                publish the JSON ``null``, publish ``b"null"``).
            key: The message key; messages with one key go to one partition, in order.
            headers: Header names and values (str or bytes).
            wait: With False, return as soon as the producer has queued the message (it sends
                queued messages in batches): the broker's answer is not waited for. A message
                the broker does not take is then logged and counted
                (`taskflow.publish.undelivered`) instead of raised, and shutdown sends what is
                queued before the process exits. See
                [Publishing without waiting](../consuming.md#publishing-without-waiting).
            codec: How a value that is not bytes, str or None is encoded (default the App's
                `codec`); the record's ``content-type`` header names it.

        With a tracer provider set up (see [Observability](../observability.md#spans)), a
        `send {topic}` span of kind PRODUCER covers the publish, until the broker answers (with
        `wait=False` too), and the headers carry its context; otherwise they carry the current
        span's context, if any.

        Raises:
            StateError: when the app is not running.
            PublishError: when the value cannot be encoded, or is not of a `Topic`'s payload
                type; with `wait=True`, also when the broker refuses it.
        """
        broker = self._broker
        if broker is None:
            raise StateError(
                f"app {self.name!r} is not running: publish from a handler, a startup hook, "
                "or inside `async with TestClient(app)`"
            )
        if isinstance(topic, Topic):
            topic.checked(value, key)
            codec = codec or topic.codec
            topic = topic.name
        raw_key = encode_key(key)
        payload, raw_headers = encode_record(value, encode_headers(headers), codec or self.codec)
        if not wait:
            await self._enqueue(broker, topic, payload, raw_key, raw_headers)
        elif self._tracer is not None:
            await traced_publish(
                self._tracer, broker, topic, payload, key=raw_key, headers=raw_headers
            )
        else:
            await broker.publish(
                topic, payload, key=raw_key, headers=with_trace_context(raw_headers)
            )

    async def _enqueue(
        self, broker: Broker, topic: str, value: bytes | None, key: bytes | None, headers: Headers
    ) -> None:
        """Queue a record and hand its delivery to the app's `Deliveries`."""
        deliveries = self._deliveries
        try:
            if self._tracer is not None:
                delivery = await traced_enqueue(
                    self._tracer, broker, topic, value, key=key, headers=headers
                )
            else:
                delivery = await broker.enqueue(
                    topic, value, key=key, headers=with_trace_context(headers)
                )
        except PublishError as exc:
            deliveries.refused(topic, key, exc)
            return
        deliveries.watch(delivery, topic, key)

    def attach(self, broker: Broker | None, deliveries: Deliveries | None = None) -> None:
        """Set (or clear) the running broker. Called by the runner, not by users.

        Whether `publish` opens spans is decided here, once, as for the consumers' telemetry.
        `deliveries` owns what `publish(..., wait=False)` queues (a new one when not given).
        """
        self._broker = broker
        self._tracer = publish_tracer(self.tracer_provider) if broker is not None else None
        self._deliveries = deliveries or Deliveries()

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
        check.worker_name(name)
        if name in self.worker_names():
            raise ConfigurationError(
                f"a worker named {name!r} is already registered; pass name= to tell them apart"
            )
        return name


async def _run_hooks(hooks: Sequence[Hook]) -> None:
    for hook in hooks:
        await hook()


def _kafka_options(environ: Mapping[str, str]) -> Mapping[str, Any]:
    """The `TASKFLOW_KAFKA_<OPTION>` variables as typed aiokafka options (Kafka apps only)."""
    from taskflow.brokers.kafka import kafka_options_from_env

    return kafka_options_from_env(environ)
