"""Registrations: frozen descriptions of what an App runs, made by `App.add_*`, read by workers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from taskflow.backoff import Backoff
from taskflow.retry_topics import RetryTopics

if TYPE_CHECKING:
    from taskflow.context import Context
    from taskflow.handler import Handler
    from taskflow.message import Message
    from taskflow.ratelimit import RateLimit
    from taskflow.schedule import Schedule
    from taskflow.types import Codec

__all__ = [
    "CatchUp",
    "ConsumerSpec",
    "FunctionWorkerSpec",
    "IdempotencyKey",
    "MiddlewareFactory",
    "OnStoreError",
    "Ordering",
    "RateLimitScope",
    "ScheduleSpec",
    "Start",
    "consumer_stages",
    "retry_stage_spec",
]

Ordering = Literal["partition", "key", "none"]
RateLimitScope = Literal["local", "global"]
MiddlewareFactory = Callable[["Handler"], "Handler"]
OnStoreError = Literal["fail", "proceed"]
IdempotencyKey = Callable[["Message"], "str | bytes | None"]
CatchUp = Literal["none", "latest", "all"]
Start = Literal["earliest", "latest"]

DEFAULT_LEASE = 30.0
"""Seconds an idempotency claim lasts unless renewed; renewed every third of it while running."""
DEFAULT_RETENTION = 7 * 24 * 3600.0
"""Seconds a done mark is kept, so a duplicate within that time is skipped."""
DEFAULT_BATCH_WAIT = 0.1
"""Seconds a batch consumer's oldest waiting record waits for its batch to fill, while its
partition is behind (a caught-up partition's records go at once)."""
DEFAULT_GRACE = 3600.0
"""Seconds back that a periodic task's missed ticks are caught up (with `catch_up=`)."""


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    """A consumer registration: which topics, which group, which handler, which policies."""

    name: str
    topics: tuple[str, ...]
    group: str
    func: Callable[..., Any]
    handler: Handler
    ordering: Ordering = "partition"
    concurrency: int = 1
    timeout: float | None = None
    retry: Backoff = field(default_factory=Backoff)
    max_attempts: int | None = None
    dead_letter: str | None = None
    reject_on: tuple[type[BaseException], ...] = ()
    middleware: tuple[MiddlewareFactory, ...] = ()
    max_buffered: int = 1000
    rate_limit: RateLimit | None = None
    rate_limit_scope: RateLimitScope = "local"
    idempotent: bool = False
    idempotency_key: IdempotencyKey | None = None
    idempotency_lease: float = DEFAULT_LEASE
    idempotency_retention: float = DEFAULT_RETENTION
    on_store_error: OnStoreError = "fail"
    start: Start | None = None
    """Where the group begins a partition it has no committed offset for; None: the broker's
    option (``auto_offset_reset``), else ``earliest``."""
    consumer_options: Mapping[str, Any] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    """Kafka consumer options of this registration only, over the App's `broker_options`."""
    batch: int | None = None
    batch_wait: float = DEFAULT_BATCH_WAIT
    batch_decode: Callable[[Message], Any] | None = None  # one record to the handler's element type
    codec: Codec | None = None
    """The codec that reads this consumer's payloads; None: the App's."""
    retry_topics: RetryTopics | None = None
    """The retry stages of `topics`: a failure goes to the next one instead of holding its
    partition; None retries in place."""
    retrying: bool = False
    """True for the registration's retry stage: it consumes the retry topics of `retry_topics`
    as group `consumer_group` and runs only records that `group` failed."""

    @property
    def consumer_group(self) -> str:
        """The consumer group its broker consumer joins: `group`, or ``<group>.retry`` for a
        retry stage (`group` still scopes idempotency keys and names dead letters)."""
        return f"{self.group}.retry" if self.retrying else self.group

    @property
    def stage_topics(self) -> tuple[str, ...]:
        """The retry topics of this registration's topics, stage by stage (none without)."""
        return () if self.retry_topics is None else self.retry_topics.topics(self.topics)


def retry_stage_spec(spec: ConsumerSpec) -> ConsumerSpec:
    """The registration of `spec`'s retry stage: named ``<name>.retry``, it consumes the retry
    topics from the earliest record (a retry record is never skipped for want of an offset)
    with the same handler and options."""
    assert spec.retry_topics is not None, "only a registration with retry topics has a stage"
    return replace(
        spec,
        name=f"{spec.name}.retry",
        topics=spec.stage_topics,
        start="earliest",
        retrying=True,
    )


def consumer_stages(spec: ConsumerSpec) -> tuple[ConsumerSpec, ...]:
    """Every consumer `spec` runs as: itself, and its retry stage when it has retry topics (each
    a worker of its own, with its own consumer group)."""
    return (spec, retry_stage_spec(spec)) if spec.retry_topics else (spec,)


@dataclass(frozen=True, slots=True)
class ScheduleSpec:
    """A periodic-task registration; `fleet`, `catch_up`, `grace` and `lease` (seconds) are the
    fleet-wide scheduling options of `App.add_schedule`."""

    name: str
    schedule: Schedule
    func: Callable[..., Any]
    handler: Handler
    run_at_start: bool = False
    jitter: timedelta = timedelta(0)
    timeout: float | None = None
    middleware: tuple[MiddlewareFactory, ...] = ()
    idempotent: bool = False
    idempotency_lease: float = DEFAULT_LEASE
    idempotency_retention: float = DEFAULT_RETENTION
    on_store_error: OnStoreError = "fail"
    fleet: bool = True
    catch_up: CatchUp = "none"
    grace: float = DEFAULT_GRACE
    lease: float = DEFAULT_LEASE


@dataclass(frozen=True, slots=True)
class FunctionWorkerSpec:
    """A long-running async function registered with `@app.worker`; it runs until `ctx.stopping`."""

    name: str
    func: Callable[[Context], Any]
