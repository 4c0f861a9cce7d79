"""Checks of what a user registers, made before anything runs.

Each check takes an option as it was passed to `App` or an `add_*` method and returns the value a
registration (`taskflow.specs`) holds, or raises `ConfigurationError` saying what was wrong and
what to do. `App` calls them on every registration; the operator commands reuse `topic`.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeGuard

from taskflow.backoff import Backoff
from taskflow.config import POSITIVE_SECONDS, Seconds
from taskflow.config import flag as config_flag
from taskflow.exceptions import ConfigurationError
from taskflow.ratelimit import RateLimit
from taskflow.ratelimit import rate_limit as parse_rate_limit
from taskflow.retry_topics import RetryTopics
from taskflow.schedule import Cron, Schedule, interval
from taskflow.specs import (
    DEFAULT_BATCH_WAIT,
    CatchUp,
    IdempotencyKey,
    MiddlewareFactory,
    OnStoreError,
    Ordering,
    RateLimitScope,
    Start,
)
from taskflow.stores.base import IdempotencyStore
from taskflow.types import Worker

if TYPE_CHECKING:
    from taskflow.config import Settings
    from taskflow.specs import ConsumerSpec

__all__ = [
    "app_name",
    "batch",
    "batch_wait",
    "broker_url",
    "catch_up",
    "concurrency",
    "consumer_options",
    "dead_letter",
    "flag",
    "function_worker",
    "group",
    "hook",
    "idempotency_key",
    "idempotency_store",
    "idempotent",
    "jitter",
    "max_attempts",
    "middleware",
    "no_overlap",
    "on_store_error",
    "ordering",
    "positive_int",
    "rate_limit",
    "rate_limit_scope",
    "reject_on",
    "retry",
    "retry_topics",
    "schedule",
    "seconds",
    "start",
    "timeout",
    "topic",
    "topics",
    "worker",
    "worker_name",
]

_NAME = re.compile(r"[A-Za-z0-9._-]+")  # used with fullmatch: `$` would let "x\n" through
_MAX_TOPIC = 249  # Kafka's limit on a topic name
_ORDERINGS = ("partition", "key", "none")


# -- names ---------------------------------------------------------------------------------


def app_name(name: object) -> str:
    """An app name: letters, digits, `.`, `_` and `-`."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigurationError(
            f"an app name uses letters, digits, '.', '_' and '-', got {name!r}"
        )
    return name


def worker_name(name: object) -> str:
    """A worker name: any non-empty string."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"a worker name is a non-empty string, got {name!r}")
    return name


def topic(name: object) -> str:
    """A topic name as Kafka allows it: letters, digits, `.`, `_` and `-`, at most 249 of them,
    and neither `.` nor `..`."""
    if not _is_topic(name):
        raise ConfigurationError(
            f"a topic name uses letters, digits, '.', '_' and '-' (at most {_MAX_TOPIC}, "
            f"not '.' or '..'), got {name!r}"
        )
    return name


def _is_topic(name: object) -> TypeGuard[str]:
    return (
        isinstance(name, str)
        and _NAME.fullmatch(name) is not None
        and len(name) <= _MAX_TOPIC
        and name not in (".", "..")
    )


def topics(names: Sequence[str]) -> tuple[str, ...]:
    """One or more distinct topic names."""
    if not names:
        raise ConfigurationError("a consumer needs at least one topic: @app.consume('orders')")
    for name in names:
        topic(name)
    if len(set(names)) != len(names):
        raise ConfigurationError(f"a topic is listed twice in {list(names)}")
    return tuple(names)


def group(name: object) -> str:
    """A consumer group: any non-empty string."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(f"a consumer group is a non-empty string, got {name!r}")
    return name


# -- numbers and flags ---------------------------------------------------------------------


def positive_int(option: str, value: int) -> int:
    """A whole number of at least 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{option} must be a whole number >= 1, got {value!r}")
    return value


def seconds(option: str, value: timedelta | float) -> float:
    """A positive, finite duration given as a timedelta or seconds, in seconds."""
    amount = value.total_seconds() if isinstance(value, timedelta) else value
    return POSITIVE_SECONDS.check(amount, option)


def timeout(value: float | None) -> float | None:
    """No timeout, or a positive, finite number of seconds."""
    return None if value is None else POSITIVE_SECONDS.check(value, "timeout")


def flag(option: str, value: bool) -> bool:
    """True or False, nothing merely truthy."""
    return config_flag(value, option)


def text(option: str, value: str | None) -> str | None:
    """None, or text that is not blank."""
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigurationError(f"{option} is text that is not blank, or None; got {value!r}")
    return value


# -- consumers -----------------------------------------------------------------------------


def ordering(value: str) -> Ordering:
    """One of "partition", "key" and "none"."""
    if value not in _ORDERINGS:
        raise ConfigurationError(f"ordering is one of {', '.join(_ORDERINGS)}; got {value!r}")
    return value  # type: ignore[return-value]


def concurrency(ordering: str, value: int | None) -> int:
    """Handlers at once per partition: 1 in "partition" mode, else default 16."""
    if value is None:
        return 1 if ordering == "partition" else 16
    if ordering == "partition" and value != 1:
        raise ConfigurationError(
            "concurrency applies to ordering='key' or 'none'; in 'partition' mode each partition "
            "runs one handler at a time and partitions run concurrently"
        )
    return positive_int("concurrency", value)


def batch(value: int | None, ordering: str, max_buffered: int) -> int | None:
    """No batching, or a batch size of at least 1, at most `max_buffered`, not in "key" mode."""
    if value is None:
        return None
    positive_int("batch", value)
    if ordering == "key":
        raise ConfigurationError(
            "batch= works with ordering='partition' (a batch holds one partition's records, in "
            "order) or 'none' (records of several partitions); in 'key' mode use one of those"
        )
    if value > max_buffered:
        raise ConfigurationError(
            f"batch={value} is more than max_buffered={max_buffered}, so a batch could never "
            f"fill; pass max_buffered={value} or more"
        )
    return value


def batch_wait(value: timedelta | float | None, batch: int | None) -> float:
    """Seconds a partial batch waits to fill while its partition is behind (default 0.1)."""
    if value is None:
        return DEFAULT_BATCH_WAIT
    if batch is None:
        raise ConfigurationError("batch_wait= needs batch=: it is how long a batch waits to fill")
    amount = value.total_seconds() if isinstance(value, timedelta) else value
    return float(Seconds(zero=True).check(amount, "batch_wait"))


def retry(value: Backoff | None) -> Backoff:
    """A Backoff; default 1 s doubling to 30 s."""
    if value is None:
        return Backoff()
    if not isinstance(value, Backoff):
        raise ConfigurationError(f"retry is a Backoff, got {value!r}")
    return value


def max_attempts(value: int | None, dead_letter: str | None) -> int | None:
    """Attempts before dead-lettering: only with a dead-letter topic, default 5 there."""
    if value is None:
        return 5 if dead_letter else None
    if dead_letter is None:
        raise ConfigurationError(
            "max_attempts needs dead_letter=: without a dead-letter topic a failing message is "
            "retried until it succeeds, so nothing is lost (raise Reject to skip one on purpose)"
        )
    return positive_int("max_attempts", value)


def dead_letter(value: str | None, topics: Sequence[str]) -> str | None:
    """No dead-letter topic, or a topic name other than the consumed ones."""
    if value is None:
        return None
    if not _is_topic(value):
        raise ConfigurationError(f"dead_letter is a topic name, got {value!r}")
    if value in topics:
        raise ConfigurationError(f"the dead-letter topic {value!r} is also consumed here")
    return value


def retry_topics(
    delays: Sequence[timedelta | float] | None,
    *,
    topics: Sequence[str],
    dead_letter: str | None,
    max_attempts: int | None,
    batch: int | None,
) -> RetryTopics | None:
    """Retry stages: distinct positive delays (seconds or timedeltas, whole milliseconds), with a
    dead-letter topic for the last failure, never with `max_attempts` or `batch`, and topic
    names that are valid and clash with neither the consumed topics nor the dead-letter topic."""
    if delays is None:
        return None
    if isinstance(delays, str | bytes | timedelta | int | float) or not isinstance(
        delays, Iterable
    ):
        raise ConfigurationError(
            f"retry_topics takes a list of delays, e.g. retry_topics=[10, 60, 600], got {delays!r}"
        )
    stages = RetryTopics(tuple(_retry_delay(delay) for delay in delays))
    if not stages.delays:
        raise ConfigurationError("retry_topics needs at least one delay, e.g. [10, 60, 600]")
    if len({round(d * 1000) for d in stages.delays}) != len(stages.delays):
        raise ConfigurationError(f"retry_topics lists a delay twice: {list(stages.delays)}")
    if dead_letter is None:
        raise ConfigurationError(
            "retry_topics needs dead_letter=: a message that fails its last retry stage goes there"
        )
    if max_attempts is not None:
        raise ConfigurationError(
            "retry_topics and max_attempts do not go together: each retry stage is one "
            f"attempt, so retry_topics={list(stages.delays)} makes {len(stages) + 1} attempts"
        )
    if batch is not None:
        raise ConfigurationError(
            "retry_topics does not work with batch=: a failed batch is retried in place "
            "(use retry= and max_attempts= for it)"
        )
    for name in stages.topics(topics):
        if not _is_topic(name):
            raise ConfigurationError(
                f"the retry topic {name!r} is not a valid topic name (at most {_MAX_TOPIC} "
                "characters): use a shorter topic name"
            )
        if name in topics or name == dead_letter:
            what = "consumed here" if name in topics else "the dead-letter topic"
            raise ConfigurationError(f"the retry topic {name!r} is also {what}")
    return stages


def _retry_delay(delay: object) -> float:
    """One retry stage's delay in seconds: positive, whole milliseconds."""
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        raise ConfigurationError(
            f"a retry_topics delay is seconds (int or float) or a timedelta, got {delay!r}"
        )
    if not seconds > 0 or seconds == float("inf"):
        raise ConfigurationError(f"a retry_topics delay is positive and finite, got {delay!r}")
    if abs(seconds * 1000 - round(seconds * 1000)) > 1e-6 or round(seconds * 1000) < 1:
        raise ConfigurationError(
            f"a retry_topics delay is whole milliseconds (it names its topic), got {delay!r}"
        )
    return float(seconds)


def reject_on(types: Sequence[type[BaseException]]) -> tuple[type[BaseException], ...]:
    """A sequence of Exception subclasses (not a single class, nor BaseException-only ones)."""
    if isinstance(types, type) or not isinstance(types, Iterable):
        raise ConfigurationError(f"reject_on takes a sequence of exception classes, got {types!r}")
    for kind in types:
        if not (isinstance(kind, type) and issubclass(kind, Exception)):
            raise ConfigurationError(f"reject_on takes exception classes, got {kind!r}")
    return tuple(types)


def middleware(factories: Sequence[MiddlewareFactory]) -> tuple[MiddlewareFactory, ...]:
    """A sequence of callables, each building a middleware around the next handler."""
    if not isinstance(factories, Iterable):
        raise ConfigurationError(f"middleware is a sequence of middleware, got {factories!r}")
    found = tuple(factories)
    for factory in found:
        if not callable(factory):
            raise ConfigurationError(f"middleware {factory!r} is not callable")
    return found


def rate_limit(value: RateLimit | str | None) -> RateLimit | None:
    """No limit, a RateLimit, or its text form such as ``"100/s"``."""
    return None if value is None else parse_rate_limit(value)


def rate_limit_scope(scope: str, limit: RateLimit | str | None) -> RateLimitScope:
    """ "local" or "global"; "global" only with a limit to share."""
    if scope not in ("local", "global"):
        raise ConfigurationError(f"rate_limit_scope is 'local' or 'global', got {scope!r}")
    if scope == "global" and limit is None:
        raise ConfigurationError("rate_limit_scope='global' needs a rate_limit= to share")
    return scope  # type: ignore[return-value]


def start(value: str | None) -> Start | None:
    """None (the broker's option, else earliest), "earliest" or "latest"."""
    if value is not None and value not in ("earliest", "latest"):
        raise ConfigurationError(f"start is 'earliest' or 'latest', got {value!r}")
    return value  # type: ignore[return-value]


def consumer_options(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """Kafka consumer options for one registration, read-only: names aiokafka's consumer takes
    and taskflow does not set itself, with values of their type."""
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ConfigurationError(
            f"consumer_options is a mapping of Kafka consumer option names to values, got {value!r}"
        )
    if not value:
        return MappingProxyType({})
    from taskflow.brokers.kafka import check_consumer_options  # only who passes options pays

    return MappingProxyType(check_consumer_options(value))


def no_overlap(
    registered: Iterable[ConsumerSpec], name: str, topics: Sequence[str], group: str
) -> None:
    """No other registration of the app consumes one of `topics` in `group`: its members
    would split the topic's partitions, each handler seeing only part of the messages."""
    for other in registered:
        shared = [topic for topic in topics if topic in other.topics]
        if other.group == group and shared:
            raise ConfigurationError(
                f"consumers {other.name!r} and {name!r} both consume {shared[0]!r} in group "
                f"{group!r}, so each would get only some of its partitions; pass group= to "
                "give one a group of its own"
            )


# -- idempotency ---------------------------------------------------------------------------


def idempotent(value: bool | None, default: bool) -> bool:
    """True or False; None takes the App's default."""
    if value is None:
        return default
    return flag("idempotent", value)


def idempotency_key(key: IdempotencyKey | None, idempotent: bool) -> IdempotencyKey | None:
    """No key function, or a callable one on an idempotent consumer."""
    if key is None:
        return None
    if not callable(key):
        raise ConfigurationError(
            f"idempotency_key is a function taking the Message and returning its key, got {key!r}"
        )
    if not idempotent:
        raise ConfigurationError("idempotency_key= needs idempotent=True (here or on the App)")
    return key


def idempotency_store(store: IdempotencyStore | None) -> IdempotencyStore | None:
    """No store (Redis is used), or an object with the IdempotencyStore methods."""
    if store is not None and not isinstance(store, IdempotencyStore):
        raise ConfigurationError(
            f"idempotency_store needs async claim, complete, release, extend and remaining, "
            f"as MemoryIdempotencyStore has; got {store!r}"
        )
    return store


def on_store_error(value: str) -> OnStoreError:
    """ "fail" or "proceed"."""
    if value not in ("fail", "proceed"):
        raise ConfigurationError(f"on_store_error is 'fail' or 'proceed', got {value!r}")
    return value  # type: ignore[return-value]


# -- periodic tasks ------------------------------------------------------------------------


def schedule(value: Schedule | timedelta | float | str, *, hash_id: str) -> Schedule:
    """A Schedule as given, a cron expression in UTC (``H`` hashing `hash_id`), or a period."""
    if isinstance(value, str):
        return Cron(value, hash_id=hash_id)
    if isinstance(value, Schedule):
        return value
    return interval(value)


def jitter(value: timedelta | float, schedule: Schedule) -> timedelta:
    """A delay of zero or more, shorter than the period of an interval schedule."""
    if isinstance(value, bool) or not isinstance(value, timedelta | int | float):
        raise ConfigurationError(f"jitter is a timedelta or seconds, got {value!r}")
    try:
        delay = value if isinstance(value, timedelta) else timedelta(seconds=value)
    except (ValueError, OverflowError):  # NaN or infinity
        raise ConfigurationError(f"jitter is a finite number of seconds, got {value!r}") from None
    if delay < timedelta(0):
        raise ConfigurationError(f"jitter cannot be negative, got {delay}")
    period = getattr(schedule, "period", None)
    if isinstance(period, timedelta) and delay >= period:
        raise ConfigurationError(f"jitter ({delay}) must be shorter than the period ({period})")
    return delay


def catch_up(value: str, fleet: bool) -> CatchUp:
    """ "none", "latest" or "all"; the last two only for a fleet task."""
    if value not in ("none", "latest", "all"):
        raise ConfigurationError(f"catch_up is 'none', 'latest' or 'all', got {value!r}")
    if value != "none" and not fleet:
        raise ConfigurationError(
            "catch_up= needs fleet=True: the fleet's records in Redis tell which ticks were missed"
        )
    return value  # type: ignore[return-value]


# -- workers, hooks and the broker ---------------------------------------------------------


def worker(value: object) -> Worker:
    """An object with `name`, `async start()` and `async stop()`."""
    if not isinstance(value, Worker):
        raise ConfigurationError(
            f"{value!r} is not a worker: it needs a name, async start() and async stop()"
        )
    return value


def function_worker(func: object) -> None:
    """An `async def` for `@app.worker`."""
    if not inspect.iscoroutinefunction(func):
        raise ConfigurationError(f"@app.worker needs an async def, got {func!r}")


def hook(kind: str, func: object) -> None:
    """An `async def` for `@app.on_startup` or `@app.on_shutdown` (`kind`)."""
    if not inspect.iscoroutinefunction(func):
        raise ConfigurationError(f"@app.{kind} needs an async def, got {func!r}")


def broker_url(settings: Settings) -> None:
    """A broker URL in effect, and options, that a broker can be built from; each error names the
    variable that gave what it is about. A Broker object, or no URL, is not checked here."""
    from taskflow.brokers import broker_from_settings

    if isinstance(settings.broker, str):
        broker_from_settings(settings)
