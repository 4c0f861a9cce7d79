"""The Kafka contenders of the bench that run in the project's venv, and the loop they share.

Every contender reads the same pre-produced topic from the start, in a fresh group, decodes each
record's JSON value into a dict and calls the same no-op handler body (`Counter.hit`). Each raw
loop does by hand the inherent work of a taskflow configuration, so that configuration's own
overhead is the difference:

* ``raw``: a ``getmany`` loop (max_poll_records 500) with explicit commits: the baseline.
* ``raw-asyncfor``: ``async for record in consumer`` (``getone``), committing as ``raw`` does.
* ``raw-claim``: ``raw``, claiming each batch in Redis in one pipelined round trip of
  ``SET key owner NX PX`` per record, and handling the records whose SET answered OK: the
  idempotency an application would write by hand.
* ``raw-redis``: ``raw``, with taskflow's idempotency claims and completions in Redis.
* ``raw-tracing``: ``raw``, with one OpenTelemetry SDK span per record.
* ``raw-all``: ``raw-redis`` and ``raw-tracing`` together, plus the two messaging metrics, a rate
  limiter acquire and a timeout per record.
* ``taskflow``: an App in partition mode, no middleware (counterpart ``raw``).
* ``taskflow-struct``: ``taskflow`` with a handler taking a msgspec Struct of the record's four
  fields instead of a dict (counterpart ``raw``).
* ``taskflow-key16``: ``ordering="key", concurrency=16`` (counterpart ``raw``).
* ``taskflow-batch``: ``batch=500``, a handler taking ``list[dict]`` that counts each record
  (counterpart ``raw``).
* ``taskflow-idem``: ``idempotent=True`` on the same Redis (counterpart ``raw-claim``).
* ``taskflow-idem-key``: the same with ``idempotency_key=`` the ``id`` in each record's JSON
  (counterpart ``raw-claim``).
* ``taskflow-tracing``: ``tracer_provider=`` an SDK provider (counterpart ``raw-tracing``).
* ``taskflow-all``: idempotency, traces and metrics, a rate limit far above the rate, and a
  handler timeout (counterpart ``raw-all``).

``raw-redis-lua`` (opt-in) makes the claims and completions of ``raw-redis`` with one ``EVALSHA``
per batch each way: what fewer commands would save in redis-py.

The raw loops live here and in `raw_instrumented`, the taskflow apps in `taskflow_contenders`,
the telemetry set-up both use in `otel_setup`. A contender's module is imported only when it runs,
so a contender process loads what that contender needs and no more (its peak RSS is reported).

Raw loops commit ``{tp: last + 1}`` per partition at most once per `COMMIT_INTERVAL` (taskflow's
default ``commit_interval``) and once at the end, as taskflow does.

`TARGETS` are the throughput ratios taskflow aims for, checked by `suite` and `kafka_throughput`.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from _child import HEARTBEAT_INTERVAL_MS, SESSION_TIMEOUT_MS, Counter
from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = [
    "COMMIT_INTERVAL",
    "CONSUMER_SETTINGS",
    "CONTENDERS",
    "FETCH_TIMEOUT_MS",
    "HANDLER_TIMEOUT",
    "MAX_RECORDS",
    "PARTITIONS",
    "RATE_LIMIT",
    "TARGETS",
    "BatchWork",
    "Batches",
    "Contender",
    "Handle",
    "Result",
    "Setup",
    "raw_loop",
]

PARTITIONS = 4
MAX_RECORDS = 500  # taskflow's ConsumerOptions default, given to raw as max_poll_records
COMMIT_INTERVAL = 1.0  # taskflow's default App(commit_interval=...)
FETCH_TIMEOUT_MS = 500  # taskflow's FETCH_TIMEOUT
RATE_LIMIT = 10_000_000  # per second, for the "all middleware" pair: far above any rate here
HANDLER_TIMEOUT = 30.0  # seconds, for the "all middleware" pair: never reached
CONSUMER_SETTINGS: dict[str, Any] = {
    "session_timeout_ms": SESSION_TIMEOUT_MS,
    "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
}

# (contender, compared with, the least ratio of msg/s): per-round ratios, then the median
TARGETS: list[tuple[str, str, float]] = [
    ("taskflow", "raw", 0.9),
    ("taskflow-key16", "raw", 0.8),
    ("taskflow-batch", "raw", 1.0),
    ("taskflow-idem", "raw-claim", 1.0),
    ("taskflow-idem", "raw", 0.3),
    ("taskflow-idem-key", "raw-claim", 0.8),
    ("taskflow-tracing", "raw-tracing", 0.8),
]


@dataclass(frozen=True, slots=True)
class Setup:
    """What every contender of a run shares: the broker, the topic and its ends, Redis.

    A contender handles `expected` records: the whole topic, or its first `limit` records.
    """

    bootstrap: str
    topic: str
    ends: dict[int, int]
    redis_url: str
    limit: int | None = None
    expected: int = field(init=False)

    def __post_init__(self) -> None:
        total = sum(self.ends.values())
        expected = total if self.limit is None else min(total, self.limit)
        object.__setattr__(self, "expected", expected)

    @property
    def whole(self) -> bool:
        """True when the contender reads the whole topic (so it must commit every end)."""
        return self.expected == sum(self.ends.values())

    @property
    def timeout(self) -> float:
        """Seconds a contender may take: generous, a slow one should finish, not hang."""
        return 60 + self.expected / 1000


@dataclass
class Result:
    """One run of one contender; the stamps are `time.monotonic()` values."""

    contender: str
    messages: int
    started: float  # the contender's start, in its process (before connecting)
    first: float  # the first record handled
    last: float  # the `messages`-th record handled
    committed: float  # the final commit done
    group: str = ""
    handled: int = 0  # all the records handled, `messages` and any handled after them

    @property
    def startup(self) -> float:
        return self.first - self.started

    @property
    def rate(self) -> float:
        """Records per second from the first handled to the last."""
        return self.messages / (self.last - self.first)

    @property
    def rate_committed(self) -> float:
        """Records per second from the first handled to the final commit."""
        return self.messages / (self.committed - self.first)


# -- the raw aiokafka loops -----------------------------------------------------------------

Batches = dict[TopicPartition, list[Any]]
Handle = Callable[[Any], Awaitable[None]]
# A raw loop's work on one getmany() result: it awaits `handle(record)` for every record.
BatchWork = Callable[[Batches, Handle], Awaitable[None]]


def _handler(counter: Counter) -> Handle:
    """The raw loops' handler: the record's JSON value as a dict, then the shared body."""
    loads = json.loads

    async def handle(record: Any) -> None:
        loads(record.value)
        counter.hit()

    return handle


def _consumer(setup: Setup, group: str) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        setup.topic,
        bootstrap_servers=setup.bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=MAX_RECORDS,
        **CONSUMER_SETTINGS,
    )


async def raw_loop(
    setup: Setup, name: str, group: str, work_for: Callable[[str], BatchWork] | None = None
) -> Result:
    """The getmany loop of every raw contender; `work_for(group)` gives its per-batch work."""
    counter = Counter(setup.expected)
    handle = _handler(counter)
    work = work_for(group) if work_for is not None else None
    started = time.monotonic()
    consumer = _consumer(setup, group)
    await consumer.start()
    try:
        async with asyncio.timeout(setup.timeout):
            pending: dict[TopicPartition, int] = {}
            last_commit = time.monotonic()
            while counter.count < setup.expected:
                batches = await consumer.getmany(timeout_ms=FETCH_TIMEOUT_MS)
                if work is None:
                    for records in batches.values():
                        for record in records:
                            await handle(record)
                elif batches:
                    await work(batches, handle)
                for tp, records in batches.items():
                    pending[tp] = records[-1].offset + 1
                if pending and time.monotonic() - last_commit >= COMMIT_INTERVAL:
                    await consumer.commit(pending)
                    pending = {}
                    last_commit = time.monotonic()
            if pending:
                await consumer.commit(pending)
            committed = time.monotonic()
    finally:
        await consumer.stop()
    return Result(
        name, setup.expected, started, counter.first, counter.last, committed, group, counter.count
    )


async def run_raw(setup: Setup, group: str) -> Result:
    return await raw_loop(setup, "raw", group)


async def run_raw_asyncfor(setup: Setup, group: str) -> Result:
    """``async for record in consumer`` (one ``getone`` per record), committing as `raw` does."""
    counter = Counter(setup.expected)
    handle = _handler(counter)
    started = time.monotonic()
    consumer = _consumer(setup, group)
    await consumer.start()
    try:
        async with asyncio.timeout(setup.timeout):
            pending: dict[tuple[str, int], int] = {}
            last_commit = time.monotonic()
            async for record in consumer:
                await handle(record)
                pending[record.topic, record.partition] = record.offset + 1
                if counter.count >= setup.expected:
                    break
                if time.monotonic() - last_commit >= COMMIT_INTERVAL:
                    await consumer.commit({TopicPartition(*tp): o for tp, o in pending.items()})
                    pending = {}
                    last_commit = time.monotonic()
            if pending:
                await consumer.commit({TopicPartition(*tp): o for tp, o in pending.items()})
            committed = time.monotonic()
    finally:
        await consumer.stop()
    return Result(
        "raw-asyncfor",
        setup.expected,
        started,
        counter.first,
        counter.last,
        committed,
        group,
        counter.count,
    )


@dataclass(frozen=True, slots=True)
class Contender:
    """A contender: where its run function is, the raw loop it is compared with, and whether it
    needs a flushed Redis."""

    target: str  # "module:function", imported only when the contender runs
    counterpart: str
    uses_redis: bool = False
    profile_file: str = ""
    optional: bool = False  # run only when named in --contenders

    def load(self) -> Callable[..., Awaitable[Result]]:
        """The contender's ``async def run(setup, group, **options) -> Result``."""
        module, _, function = self.target.partition(":")
        run: Callable[..., Awaitable[Result]] = getattr(importlib.import_module(module), function)
        return run


CONTENDERS: dict[str, Contender] = {
    "raw": Contender("kafka_contenders:run_raw", "raw"),
    "raw-asyncfor": Contender("kafka_contenders:run_raw_asyncfor", "raw"),
    "raw-claim": Contender("raw_instrumented:run_raw_claim", "raw", uses_redis=True),
    "raw-redis": Contender("raw_instrumented:run_raw_redis", "raw", uses_redis=True),
    "raw-tracing": Contender("raw_instrumented:run_raw_tracing", "raw"),
    "raw-all": Contender("raw_instrumented:run_raw_all", "raw", uses_redis=True),
    "raw-redis-lua": Contender(
        "raw_instrumented:run_raw_redis_lua", "raw-redis", uses_redis=True, optional=True
    ),
    "taskflow": Contender(
        "taskflow_contenders:run_taskflow", "raw", profile_file="profile-consume.txt"
    ),
    "taskflow-struct": Contender("taskflow_contenders:run_taskflow_struct", "raw"),
    "taskflow-key16": Contender(
        "taskflow_contenders:run_taskflow_key16", "raw", profile_file="profile-key.txt"
    ),
    "taskflow-batch": Contender(
        "taskflow_contenders:run_taskflow_batch", "raw", profile_file="profile-batch.txt"
    ),
    "taskflow-idem": Contender(
        "taskflow_contenders:run_taskflow_idem",
        "raw-claim",
        uses_redis=True,
        profile_file="profile-idempotent.txt",
    ),
    "taskflow-idem-key": Contender(
        "taskflow_contenders:run_taskflow_idem_key",
        "raw-claim",
        uses_redis=True,
        profile_file="profile-idempotent-key.txt",
    ),
    "taskflow-tracing": Contender(
        "taskflow_contenders:run_taskflow_tracing",
        "raw-tracing",
        profile_file="profile-tracing.txt",
    ),
    "taskflow-all": Contender(
        "taskflow_contenders:run_taskflow_all",
        "raw-all",
        uses_redis=True,
        profile_file="profile-all.txt",
    ),
}
