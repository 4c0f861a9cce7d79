"""The raw aiokafka loops that do the inherent work of taskflow's middleware by hand.

``raw-claim`` is idempotency as one would write it by hand: one pipelined round trip of
``SET key owner NX PX`` per batch, and the handler for the records whose SET answered OK.
``raw-redis`` makes taskflow's idempotency claims and completions in Redis around each batch,
``raw-tracing`` opens one SDK span per record, ``raw-all`` does both and also records the two
messaging metrics, acquires a rate limiter and sets a timeout per record. They import taskflow
only for the constants and the Lua script its middleware uses, so the commands are the same.
See `kafka_contenders` for the whole list.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from kafka_contenders import (
    HANDLER_TIMEOUT,
    RATE_LIMIT,
    Batches,
    BatchWork,
    Handle,
    Result,
    Setup,
    raw_loop,
)
from opentelemetry import propagate
from opentelemetry.trace import SpanKind
from otel_setup import (
    GETTER,
    meter_provider,
    metric_attributes,
    span_attributes,
    tracer_provider,
)
from redis.asyncio import Redis

from taskflow.middleware.ratelimit import smooth_limiter
from taskflow.specs import DEFAULT_LEASE, DEFAULT_RETENTION
from taskflow.stores.connect import REDIS_TIMEOUT
from taskflow.stores.redis import COMPLETE_SCRIPT, DONE_PREFIX
from taskflow.telemetry.metrics import PROCESS_BUCKETS

__all__ = [
    "redis_client",
    "run_raw_all",
    "run_raw_claim",
    "run_raw_redis",
    "run_raw_redis_lua",
    "run_raw_tracing",
]

LEASE_MS = round(DEFAULT_LEASE * 1000)  # taskflow's default idempotency lease, 30 s
RETENTION_MS = round(DEFAULT_RETENTION * 1000)  # and its default retention, 7 days


def redis_client(url: str) -> Redis:
    """A client set up as taskflow's runner sets up its own."""
    return Redis.from_url(url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT)


def _idempotency_prefix(group: str) -> str:
    """The key prefix of a group's claims, as taskflow spells it: ``taskflow:{group}:idem:``."""
    return f"taskflow:{{{group}}}:idem:"


async def run_raw_claim(setup: Setup, group: str) -> Result:
    """Claim each batch in one pipelined round trip, one ``SET NX PX`` per record; handle the
    records whose SET answered OK. The hand-rolled idempotency an application would write.

    No done marks: a claim lives for the lease, and a record delivered again within it is
    skipped, also when its first handler never finished. Commits as `raw` does.
    """
    client = redis_client(setup.redis_url)
    process = f"raw:{time.monotonic_ns()}"
    owners = itertools.count()
    prefix = _idempotency_prefix(group)

    async def claim_then_handle(batches: Batches, handle: Handle) -> None:
        owner = f"{process}:{next(owners)}"  # one owner per batch
        records = [record for records in batches.values() for record in records]
        async with client.pipeline(transaction=False) as pipe:
            for r in records:
                key = f"{prefix}{r.topic}:{r.partition}:{r.offset}"
                pipe.execute_command("SET", key, owner, "NX", "PX", LEASE_MS)
            claimed = await pipe.execute()
        for record, ok in zip(records, claimed, strict=True):
            if ok:
                await handle(record)

    try:
        return await raw_loop(setup, "raw-claim", group, lambda _group: claim_then_handle)
    finally:
        await client.aclose()


class _Claims:
    """Claim a batch in one MULTI and complete the handled records in one pipeline of EVALSHAs,
    with the commands taskflow's `RedisIdempotencyStore.claim_many` and `complete_many` send,
    queued the way they queue them."""

    def __init__(self, client: Redis, sha: str, group: str) -> None:
        self.client = client
        self.sha = sha
        self.prefix = _idempotency_prefix(group)
        self.process = f"raw:{time.monotonic_ns()}"
        self.owners = itertools.count()
        self.done_prefix = DONE_PREFIX.encode()

    @classmethod
    async def open(cls, url: str, group: str) -> _Claims:
        client = redis_client(url)
        return cls(client, await client.script_load(COMPLETE_SCRIPT), group)

    async def around(self, batches: Batches, handle: Handle) -> None:
        """Claim every record of `batches`, `handle` each claimed one, complete them."""
        owner = f"{self.process}:{next(self.owners)}"  # one owner per batch, as claim_many
        records = [record for records in batches.values() for record in records]
        keys = [f"{self.prefix}{r.topic}:{r.partition}:{r.offset}" for r in records]
        async with self.client.pipeline(transaction=True) as pipe:
            for key in keys:
                pipe.execute_command("SET", key, owner, "NX", "PX", LEASE_MS)
                pipe.execute_command("GET", key)
            replies = await pipe.execute()
        claimed = []
        for record, key, was_set, value in zip(
            records, keys, replies[::2], replies[1::2], strict=True
        ):
            if was_set:
                await handle(record)
                claimed.append(key)
            elif not value.startswith(self.done_prefix):
                raise RuntimeError(f"{key} is claimed by {value!r}: a stale Redis?")
        async with self.client.pipeline(transaction=False) as pipe:
            for key in claimed:
                pipe.execute_command("EVALSHA", self.sha, 1, key, owner, RETENTION_MS)
            done = await pipe.execute()
        if not all(done):
            raise RuntimeError("a completion found its claim lost")


async def run_raw_redis(setup: Setup, group: str) -> Result:
    """Claim a batch in one MULTI, handle it, complete it in one pipeline of EVALSHAs."""
    claims = await _Claims.open(setup.redis_url, group)
    try:
        return await raw_loop(setup, "raw-redis", group, lambda _group: claims.around)
    finally:
        await claims.client.aclose()


# KEYS: the batch's keys. ARGV[1]: the owner. ARGV[2]: the lease in ms. Per key: 1 claimed, 2 done,
# 0 held by another owner (or by this one: taskflow would extend it, this bench never sees it).
CLAIM_BATCH_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
    if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
        out[i] = 1
    else
        local value = redis.call('GET', key)
        out[i] = (value and string.sub(value, 1, 5) == 'done:') and 2 or 0
    end
end
return out
"""
# KEYS: the claimed keys. ARGV[1]: the owner. ARGV[2]: the retention in ms. Per key: 1 completed.
COMPLETE_BATCH_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
    if redis.call('GET', key) == ARGV[1] then
        redis.call('SET', key, 'done:' .. ARGV[1], 'PX', ARGV[2])
        out[i] = 1
    else
        out[i] = 0
    end
end
return out
"""


async def run_raw_redis_lua(setup: Setup, group: str) -> Result:
    """Opt-in: as `run_raw_redis`, but one EVALSHA claims a batch and one completes it.

    Not taskflow's command shape: it shows what sending one command per batch instead of three
    per message would save in redis-py.
    """
    client = redis_client(setup.redis_url)
    claim_sha = await client.script_load(CLAIM_BATCH_SCRIPT)
    complete_sha = await client.script_load(COMPLETE_BATCH_SCRIPT)
    process = f"raw:{time.monotonic_ns()}"
    owners = itertools.count()

    def work_for(group: str) -> BatchWork:
        prefix = _idempotency_prefix(group)

        async def claim_handle_complete(batches: Batches, handle: Handle) -> None:
            owner = f"{process}:{next(owners)}"
            records = [record for records in batches.values() for record in records]
            keys = [f"{prefix}{r.topic}:{r.partition}:{r.offset}" for r in records]
            outcomes = await client.evalsha(claim_sha, len(keys), *keys, owner, LEASE_MS)
            claimed = []
            for record, key, outcome in zip(records, keys, outcomes, strict=True):
                if outcome == 1:
                    await handle(record)
                    claimed.append(key)
                elif outcome != 2:
                    raise RuntimeError(f"{key} is claimed by another owner: a stale Redis?")
            done = await client.evalsha(complete_sha, len(claimed), *claimed, owner, RETENTION_MS)
            if not all(done):
                raise RuntimeError("a completion found its claim lost")

        return claim_handle_complete

    try:
        return await raw_loop(setup, "raw-redis-lua", group, work_for)
    finally:
        await client.aclose()


async def run_raw_tracing(setup: Setup, group: str) -> Result:
    """One SDK span per record, as an instrumented consumer loop would open it."""
    provider = tracer_provider()
    tracer = provider.get_tracer("bench")

    async def traced(batches: Batches, handle: Handle) -> None:
        for records in batches.values():
            for record in records:
                with tracer.start_as_current_span(
                    f"process {record.topic}",
                    context=propagate.extract(record.headers, getter=GETTER),
                    kind=SpanKind.CONSUMER,
                    attributes=span_attributes(record, group),
                ):
                    await handle(record)

    try:
        return await raw_loop(setup, "raw-tracing", group, lambda _group: traced)
    finally:
        provider.shutdown()


async def run_raw_all(setup: Setup, group: str) -> Result:
    """The claims of `run_raw_redis` around each batch; per claimed record a span, the two
    messaging metrics, a rate limiter acquire and a timeout around the handler."""
    claims = await _Claims.open(setup.redis_url, group)
    tracers, meters = tracer_provider(), meter_provider()
    tracer = tracers.get_tracer("bench")
    meter = meters.get_meter("bench")
    duration = meter.create_histogram(
        "messaging.process.duration", unit="s", explicit_bucket_boundaries_advisory=PROCESS_BUCKETS
    )
    consumed = meter.create_counter("messaging.client.consumed.messages", unit="{message}")
    limiter = smooth_limiter(RATE_LIMIT)  # configured as taskflow's local rate limit is
    per_partition: dict[tuple[str, int], dict[str, Any]] = {}

    async def instrumented(record: Any, handle: Handle) -> None:
        attributes = per_partition.get((record.topic, record.partition))
        if attributes is None:
            attributes = per_partition[record.topic, record.partition] = metric_attributes(
                record, group
            )
        with tracer.start_as_current_span(
            f"process {record.topic}",
            context=propagate.extract(record.headers, getter=GETTER),
            kind=SpanKind.CONSUMER,
            attributes=span_attributes(record, group),
        ):
            started = time.perf_counter()
            await limiter.acquire()
            async with asyncio.timeout(HANDLER_TIMEOUT):
                await handle(record)
            duration.record(time.perf_counter() - started, attributes)
            consumed.add(1, attributes)

    async def work(batches: Batches, handle: Handle) -> None:
        await claims.around(batches, lambda record: instrumented(record, handle))

    try:
        return await raw_loop(setup, "raw-all", group, lambda _group: work)
    finally:
        await claims.client.aclose()
        tracers.shutdown()
        meters.shutdown()
