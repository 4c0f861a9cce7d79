"""Observable OpenTelemetry instruments: what running workers count themselves, read on collection.

The per-attempt metrics are recorded by the telemetry middleware. These come from what the workers
keep anyway: the error policy's outcomes (`Processor.outcomes`), skipped periodic runs
(`ScheduledWorker.skipped`), the `def` handlers' stuck threads, and each consumer's local view of
its partitions (lag, records in flight). Callbacks read them only when the SDK collects, so they
cost nothing per message. A callback may run on the SDK's export thread: it only reads, and copies
a dict in one step before walking it.

The SDK keeps the first callbacks registered under a name, so each MeterProvider gets one set of
instruments, which reads every set of workers that `observe` has lent it.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Observation

from taskflow.handler import threads_of
from taskflow.telemetry import metrics
from taskflow.telemetry.metrics import observe_with
from taskflow.telemetry.providers import SCOPE, meter_provider
from taskflow.telemetry.tracing import error_type
from taskflow.workers.consumer import ConsumerWorker
from taskflow.workers.scheduled import ScheduledWorker

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter

    from taskflow.message import TopicPartition
    from taskflow.middleware.builtin import Resources
    from taskflow.types import Worker

__all__ = ["PartitionView", "WorkerInstruments", "observe", "partition_views"]

Attributes = dict[str, Any]


class WorkerInstruments:
    """The observable instruments of one meter, reading every set of workers added to them.

    Args:
        meter: Where the instruments are registered (scope `taskflow`).
    """

    def __init__(self, meter: Meter) -> None:
        self._running: dict[int, tuple[Worker, ...]] = {}
        self._tokens = itertools.count()
        observe_with(meter, metrics.CONSUMER_RETRIES, self._retries)
        observe_with(meter, metrics.CONSUMER_DEAD_LETTERS, self._dead_letters)
        observe_with(meter, metrics.CONSUMER_REJECTED, self._rejected)
        observe_with(meter, metrics.CONSUMER_LAG, self._lag)
        observe_with(meter, metrics.CONSUMER_IN_FLIGHT, self._in_flight)
        observe_with(meter, metrics.PERIODIC_SKIPPED, self._skipped)
        observe_with(meter, metrics.HANDLER_STUCK_THREADS, self._stuck_threads)

    def add(self, workers: Sequence[Worker]) -> int:
        """Read `workers` from now on; returns a token for `remove`."""
        token = next(self._tokens)
        self._running[token] = tuple(workers)
        return token

    def remove(self, token: int) -> None:
        """Stop reading the workers added under `token`."""
        self._running.pop(token, None)

    # -- callbacks -------------------------------------------------------------------------

    def _workers(self) -> Iterator[Worker]:
        for workers in tuple(self._running.values()):
            yield from workers

    def _consumers(self) -> Iterator[ConsumerWorker]:
        return (w for w in self._workers() if isinstance(w, ConsumerWorker))

    def _retries(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._outcomes("retry")

    def _dead_letters(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._outcomes("dead_letter")

    def _rejected(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._outcomes("skip")

    def _outcomes(self, action: str) -> list[Observation]:
        """The counts of one policy action, summed per attribute set over every consumer."""
        totals: dict[frozenset[tuple[str, Any]], int] = {}
        for worker in self._consumers():
            for (decision, topic, kind, fate), count in worker.processor.outcomes.copy().items():
                if decision.action != action:
                    continue
                attributes = {
                    "messaging.destination.name": topic,
                    "messaging.consumer.group.name": worker.spec.group,
                    "error.type": error_type(kind),
                }
                if decision.reason is not None:
                    attributes["taskflow.dead_letter.reason"] = decision.reason
                if fate is not None:
                    attributes["taskflow.dead_letter.outcome"] = fate
                key = frozenset(attributes.items())
                totals[key] = totals.get(key, 0) + count
        return [Observation(count, dict(key)) for key, count in totals.items()]

    def _lag(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(view.lag, view.attributes)
            for worker in self._consumers()
            for view in partition_views(worker)
            if view.lag is not None
        ]

    def _in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(view.in_flight, view.attributes)
            for worker in self._consumers()
            for view in partition_views(worker)
        ]

    def _stuck_threads(self, options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for worker in self._workers():
            if isinstance(worker, ConsumerWorker | ScheduledWorker):
                threads = threads_of(worker.spec.handler)
                if threads is not None:
                    stuck = len(threads.stuck)
                    observations.append(Observation(stuck, {"taskflow.worker": worker.name}))
        return observations

    def _skipped(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(worker.skipped, {"taskflow.periodic.task": worker.name})
            for worker in self._workers()
            if isinstance(worker, ScheduledWorker)
        ]


@dataclass(frozen=True, slots=True)
class PartitionView:
    """What a consumer worker knows, locally, of one partition it consumes."""

    attributes: Attributes
    """The partition's metric attributes: topic, partition and consumer group."""
    lag: int | None
    """Records not finished yet, up to the high watermark of the last fetch; None if unknown."""
    in_flight: int
    """Records fetched and not finished."""


def partition_views(worker: ConsumerWorker) -> list[PartitionView]:
    """Lag and records in flight of each partition `worker` consumes, without a broker request.

    The lag is the partition's high watermark as of its last fetch minus the lowest offset the
    worker has not finished (the one it commits next; before it has any record of the partition,
    its fetch position). Unknown (None) until the partition has been fetched once.
    """
    return [
        PartitionView(_partition_attributes(tp, worker.spec.group), done.lag, done.in_flight)
        for tp, done in worker.progress().items()
    ]


def _partition_attributes(tp: TopicPartition, group: str) -> Attributes:
    return {
        "messaging.destination.name": tp.topic,
        "messaging.destination.partition.id": str(tp.partition),
        "messaging.consumer.group.name": group,
    }


_BY_PROVIDER: weakref.WeakKeyDictionary[Any, WorkerInstruments] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def observe(workers: Sequence[Worker], resources: Resources) -> Iterator[None]:
    """Let the observable instruments read `workers` inside the block, when a meter is set up.

    Without a real MeterProvider (the App's, else the global one) nothing is registered.
    """
    provider = meter_provider(resources)
    if provider is None:
        yield
        return
    instruments = _BY_PROVIDER.get(provider)
    if instruments is None:
        instruments = _BY_PROVIDER[provider] = WorkerInstruments(provider.get_meter(SCOPE))
    token = instruments.add(workers)
    try:
        yield
    finally:
        instruments.remove(token)
