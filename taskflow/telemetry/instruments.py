"""Observable OpenTelemetry instruments: what running workers say of themselves, read on collection.

The per-attempt metrics are recorded by the telemetry middleware. These come from each worker's
`status()` (`taskflow.telemetry.status`): the error policy's counts, skipped periodic runs, the
`def` handlers' stuck threads, each consumer's local view of its partitions (lag, records in
flight) and the bytes it holds of the process's memory budget; and from the app's `Deliveries`,
the records published without waiting that were lost. Callbacks read them only when the SDK
collects, so they cost nothing per message. A callback may run on the SDK's export thread: a
status only reads, and never asks the broker.

The SDK keeps the first callbacks registered under a name, so each MeterProvider gets one set of
instruments, which reads every set of workers that `observe` has lent it.
"""

from __future__ import annotations

import contextlib
import itertools
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from opentelemetry.metrics import CallbackOptions, Observation

from taskflow.telemetry import metrics
from taskflow.telemetry.metrics import observe_with
from taskflow.telemetry.providers import SCOPE, meter_provider
from taskflow.telemetry.status import ConsumerStatus, PartitionStatus, PeriodicStatus
from taskflow.telemetry.tracing import error_type
from taskflow.types import WorkerStatus, status_of

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter

    from taskflow.deliveries import Deliveries
    from taskflow.middleware.builtin import Resources
    from taskflow.types import Worker

__all__ = ["WorkerInstruments", "observe"]

Attributes = dict[str, Any]


class WorkerInstruments:
    """The observable instruments of one meter, reading every set of workers added to them.

    Args:
        meter: Where the instruments are registered (scope `taskflow`).
    """

    def __init__(self, meter: Meter) -> None:
        self._running: dict[int, tuple[Worker, ...]] = {}
        self._deliveries: dict[int, Deliveries] = {}
        self._tokens = itertools.count()
        observe_with(meter, metrics.CONSUMER_RETRIES, self._retries)
        observe_with(meter, metrics.CONSUMER_DEAD_LETTERS, self._dead_letters)
        observe_with(meter, metrics.CONSUMER_REJECTED, self._rejected)
        observe_with(meter, metrics.CONSUMER_TOMBSTONES_SKIPPED, self._tombstones)
        observe_with(meter, metrics.CONSUMER_LAG, self._lag)
        observe_with(meter, metrics.CONSUMER_IN_FLIGHT, self._in_flight)
        observe_with(meter, metrics.CONSUMER_BUFFERED_BYTES, self._buffered_bytes)
        observe_with(meter, metrics.PERIODIC_SKIPPED, self._skipped)
        observe_with(meter, metrics.HANDLER_STUCK_THREADS, self._stuck_threads)
        observe_with(meter, metrics.PUBLISH_UNDELIVERED, self._undelivered)

    def add(self, workers: Sequence[Worker], deliveries: Deliveries | None = None) -> int:
        """Read `workers` (and `deliveries`) from now on; returns a token for `remove`."""
        token = next(self._tokens)
        self._running[token] = tuple(workers)
        if deliveries is not None:
            self._deliveries[token] = deliveries
        return token

    def remove(self, token: int) -> None:
        """Stop reading the workers added under `token`."""
        self._running.pop(token, None)
        self._deliveries.pop(token, None)

    # -- callbacks -------------------------------------------------------------------------

    def _statuses(self) -> Iterator[WorkerStatus]:
        for workers in tuple(self._running.values()):
            for worker in workers:
                yield status_of(worker)

    def _consumers(self) -> Iterator[ConsumerStatus]:
        return (s for s in self._statuses() if isinstance(s, ConsumerStatus))

    def _retries(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._counts("retry") + self._counts("retry_topic")

    def _dead_letters(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._counts("dead_letter")

    def _rejected(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._counts("skip")

    def _tombstones(self, options: CallbackOptions) -> Iterable[Observation]:
        return self._counts("skip_tombstone", with_error=False)

    def _counts(self, action: str, *, with_error: bool = True) -> list[Observation]:
        """The counts of one policy action, summed per attribute set over every consumer."""
        totals: dict[frozenset[tuple[str, Any]], int] = {}
        for status in self._consumers():
            for counted in status.policy_counts:
                if counted.action != action:
                    continue
                attributes: dict[str, Any] = {
                    "messaging.destination.name": counted.topic,
                    "messaging.consumer.group.name": status.group,
                }
                if with_error:
                    attributes["error.type"] = error_type(counted.error)
                if counted.reason is not None:
                    attributes["taskflow.dead_letter.reason"] = counted.reason
                if counted.fate is not None:
                    attributes["taskflow.dead_letter.outcome"] = counted.fate
                if counted.stage is not None:
                    attributes["taskflow.retry.stage"] = counted.stage
                key = frozenset(attributes.items())
                totals[key] = totals.get(key, 0) + counted.count
        return [Observation(count, dict(key)) for key, count in totals.items()]

    def _lag(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(partition.lag, _partition_attributes(partition, status.group))
            for status in self._consumers()
            for partition in status.partitions
            if partition.lag is not None
        ]

    def _in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(partition.in_flight, _partition_attributes(partition, status.group))
            for status in self._consumers()
            for partition in status.partitions
        ]

    def _buffered_bytes(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(
                status.buffered_bytes,
                {"messaging.consumer.group.name": status.group, "taskflow.worker": worker.name},
            )
            for workers in tuple(self._running.values())
            for worker in workers
            if isinstance(status := status_of(worker), ConsumerStatus)
        ]

    def _stuck_threads(self, options: CallbackOptions) -> Iterable[Observation]:
        observations = []
        for workers in tuple(self._running.values()):
            for worker in workers:
                status = status_of(worker)
                if not isinstance(status, ConsumerStatus | PeriodicStatus):
                    continue
                if status.stuck_threads is not None:
                    attributes = {"taskflow.worker": worker.name}
                    observations.append(Observation(status.stuck_threads, attributes))
        return observations

    def _skipped(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(status.skipped, {"taskflow.periodic.task": worker.name})
            for workers in tuple(self._running.values())
            for worker in workers
            if isinstance(status := status_of(worker), PeriodicStatus)
        ]

    def _undelivered(self, options: CallbackOptions) -> Iterable[Observation]:
        totals: dict[tuple[str, str], int] = {}
        for deliveries in tuple(self._deliveries.values()):
            for where, count in tuple(deliveries.undelivered.items()):
                totals[where] = totals.get(where, 0) + count
        return [
            Observation(count, {"messaging.destination.name": topic, "error.type": kind})
            for (topic, kind), count in totals.items()
        ]


def _partition_attributes(partition: PartitionStatus, group: str) -> Attributes:
    return {
        "messaging.destination.name": partition.tp.topic,
        "messaging.destination.partition.id": str(partition.tp.partition),
        "messaging.consumer.group.name": group,
    }


_BY_PROVIDER: weakref.WeakKeyDictionary[Any, WorkerInstruments] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def observe(
    workers: Sequence[Worker], resources: Resources, deliveries: Deliveries | None = None
) -> Iterator[None]:
    """Let the observable instruments read `workers` (and the app's `deliveries`) inside the block,
    when a meter is set up.

    Without a real MeterProvider (the App's, else the global one) nothing is registered.
    """
    provider = meter_provider(resources)
    if provider is None:
        yield
        return
    instruments = _BY_PROVIDER.get(provider)
    if instruments is None:
        instruments = _BY_PROVIDER[provider] = WorkerInstruments(provider.get_meter(SCOPE))
    token = instruments.add(workers, deliveries)
    try:
        yield
    finally:
        instruments.remove(token)
