"""The taskflow contenders: one App per configuration, over the same topic as the raw loops.

Each App consumes in a fresh group with a no-op ``async def handler(order: dict)`` (taskflow
decodes the JSON), the consumer settings the raw loops use, and ``commit_interval`` 1 s. See
`kafka_contenders` for the list and the raw loop each is compared with.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import msgspec
from _child import Counter
from kafka_contenders import (
    COMMIT_INTERVAL,
    CONSUMER_SETTINGS,
    HANDLER_TIMEOUT,
    RATE_LIMIT,
    Result,
    Setup,
)

from taskflow import App, Message, TopicPartition
from taskflow.runner import open_runtime
from taskflow.workers.consumer import ConsumerWorker

__all__ = [
    "run_taskflow",
    "run_taskflow_all",
    "run_taskflow_batch",
    "run_taskflow_idem",
    "run_taskflow_idem_key",
    "run_taskflow_key16",
    "run_taskflow_struct",
    "run_taskflow_tracing",
]


async def run_taskflow(
    setup: Setup,
    group: str,
    *,
    name: str = "taskflow",
    observe: contextlib.AbstractContextManager[Any] | None = None,
    consumer_options: dict[str, Any] | None = None,
    batch: int | None = None,
    payload: Any = dict[str, Any],
    **app_options: Any,
) -> Result:
    """`observe` (a profiler) is entered just before the app starts and left once it stopped.

    With `batch`, the handler takes the batch as ``list[dict]`` and counts each record of it.
    `payload` is the handler's payload annotation (a dict, read by the default JSON codec).
    """
    counter = Counter(setup.expected)
    app = App(
        "bench",
        broker=f"kafka://{setup.bootstrap}",
        broker_options={**CONSUMER_SETTINGS, "enable_idempotence": False},
        commit_interval=COMMIT_INTERVAL,
        **app_options,
    )

    async def handler(order: dict[str, Any]) -> None:
        counter.hit()

    handler.__annotations__["order"] = payload

    async def batch_handler(orders: list[dict[str, Any]]) -> None:
        for _ in orders:
            counter.hit()

    if batch is None:
        app.add_consumer(handler, setup.topic, group=group, **(consumer_options or {}))
    else:
        options = {"name": "handler", "batch": batch, **(consumer_options or {})}
        app.add_consumer(batch_handler, setup.topic, group=group, **options)
    targets = (
        {TopicPartition(setup.topic, p): end for p, end in setup.ends.items()}
        if setup.whole
        else None
    )

    with observe or contextlib.nullcontext():
        started = time.monotonic()
        committed, report = await _run_app(app, counter, targets, setup.timeout)
    if not report.clean:
        raise RuntimeError(f"{name} did not stop cleanly: {report}")
    return Result(
        name,
        counter.expected,
        started,
        counter.first,
        counter.last,
        committed,
        group,
        counter.count,
    )


async def _run_app(
    app: App, counter: Counter, targets: dict[TopicPartition, int] | None, timeout: float
) -> tuple[float, Any]:
    """Run `app` until `counter` is done and, when `targets` are given, they are committed;
    then stop it (which commits what was handled). Returns the final commit's stamp."""
    async with open_runtime(app) as runtime:
        run = asyncio.create_task(runtime.manager.run())
        worker = runtime.worker("handler")
        assert isinstance(worker, ConsumerWorker)
        committed = 0.0
        try:
            async with asyncio.timeout(timeout):
                await counter.done.wait()
                while targets is not None:  # the commit loop commits once per commit_interval
                    done = {part.tp: part.committed for part in worker.status().partitions}
                    if all(done.get(tp) == end for tp, end in targets.items()):
                        committed = time.monotonic()
                        break
                    await asyncio.sleep(0.002)
        finally:
            runtime.manager.request_stop("benchmark done")
            report = await run
    return committed or time.monotonic(), report


async def run_taskflow_key16(setup: Setup, group: str, **kwargs: Any) -> Result:
    options = {"ordering": "key", "concurrency": 16}
    return await run_taskflow(
        setup, group, name="taskflow-key16", consumer_options=options, **kwargs
    )


class Order(msgspec.Struct):
    """The bench's record, as a Struct: decoded and validated by msgspec in one step."""

    id: int
    customer: str
    amount: int
    note: str


async def run_taskflow_struct(setup: Setup, group: str, **kwargs: Any) -> Result:
    return await run_taskflow(setup, group, name="taskflow-struct", payload=Order, **kwargs)


async def run_taskflow_batch(setup: Setup, group: str, **kwargs: Any) -> Result:
    return await run_taskflow(setup, group, name="taskflow-batch", batch=500, **kwargs)


async def run_taskflow_idem(setup: Setup, group: str, **kwargs: Any) -> Result:
    return await run_taskflow(
        setup, group, name="taskflow-idem", redis_url=setup.redis_url, idempotent=True, **kwargs
    )


def order_id(message: Message) -> bytes:
    """A record's business key: the ``id`` of its JSON value, unique per record.

    Read without decoding the value (`kafka_throughput.make_values` writes ``{"id":N,...``
    first, without spaces): a second ``json.loads`` would cost about 1.7 µs per record that the
    raw pair does not pay. Were the layout to change, keys would collide, records would be
    skipped and the run would fail on its count, not pass quietly.
    """
    value = message.value
    return value[6 : value.index(b",", 6)]


async def run_taskflow_idem_key(setup: Setup, group: str, **kwargs: Any) -> Result:
    return await run_taskflow(
        setup,
        group,
        name="taskflow-idem-key",
        consumer_options={"idempotency_key": order_id},
        redis_url=setup.redis_url,
        idempotent=True,
        **kwargs,
    )


async def run_taskflow_tracing(setup: Setup, group: str, **kwargs: Any) -> Result:
    from otel_setup import tracer_provider  # the SDK, only in the processes that trace

    provider = tracer_provider()
    try:
        return await run_taskflow(
            setup, group, name="taskflow-tracing", tracer_provider=provider, **kwargs
        )
    finally:
        provider.shutdown()


async def run_taskflow_all(setup: Setup, group: str, **kwargs: Any) -> Result:
    from otel_setup import meter_provider, tracer_provider

    tracers, meters = tracer_provider(), meter_provider()
    options = {"rate_limit": f"{RATE_LIMIT}/s", "timeout": HANDLER_TIMEOUT}
    try:
        return await run_taskflow(
            setup,
            group,
            name="taskflow-all",
            consumer_options=options,
            redis_url=setup.redis_url,
            idempotent=True,
            tracer_provider=tracers,
            meter_provider=meters,
            **kwargs,
        )
    finally:
        tracers.shutdown()
        meters.shutdown()
