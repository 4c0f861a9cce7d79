"""Every metric taskflow records, defined once: its name, kind, unit, description and buckets.

A new metric goes here first (and into docs/observability.md, which lists every name; a test
checks both agree), then is created where it is recorded with `create` (or `observe_with` for
an observable one). Recorded per attempt by the telemetry middleware: the `messaging.*` and
`taskflow.periodic.*` histograms and counters; by the idempotency and rate-limit middleware:
`taskflow.idempotency.outcomes` and `taskflow.ratelimit.wait`; read on collection from the
workers' own status and the app's deliveries (`taskflow.telemetry.instruments`): the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from opentelemetry import metrics, trace

from taskflow.telemetry.providers import SCOPE, meter_provider, telemetry_enabled

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Counter, Histogram, Meter, Observation

    from taskflow.middleware.builtin import Resources
    from taskflow.specs import ConsumerSpec

__all__ = [
    "CONSUMER_BUFFERED_BYTES",
    "CONSUMER_DEAD_LETTERS",
    "CONSUMER_IN_FLIGHT",
    "CONSUMER_LAG",
    "CONSUMER_REJECTED",
    "CONSUMER_RETRIES",
    "HANDLER_STUCK_THREADS",
    "IDEMPOTENCY_OUTCOMES",
    "INSTRUMENTS",
    "MESSAGING_CONSUMED",
    "MESSAGING_PROCESS_DURATION",
    "PERIODIC_DURATION",
    "PERIODIC_LATENESS",
    "PERIODIC_RUNS",
    "PERIODIC_SKIPPED",
    "PUBLISH_UNDELIVERED",
    "RATELIMIT_WAIT",
    "Instrument",
    "WaitTelemetry",
    "create",
    "idempotency_outcomes",
    "observe_with",
    "rate_limit_wait",
]

Kind = Literal[
    "counter", "histogram", "observable_counter", "observable_gauge", "observable_up_down_counter"
]
Callback = Callable[["CallbackOptions"], Iterable["Observation"]]

# The messaging semantic conventions' advice for messaging.process.duration.
PROCESS_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
# Periodic jobs run for longer than a message handler, and may start late by more than a tick.
PERIODIC_BUCKETS: Final = (*PROCESS_BUCKETS, 30, 60, 120, 300, 600, 1800, 3600)
LATENESS_BUCKETS: Final = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)
# From one interval of a fast limit (1 ms at 1000/s) to the hour of a "1/h" one.
WAIT_BUCKETS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
)  # fmt: skip

WAIT_EVENT: Final = "taskflow.rate_limit.wait"
"""The span event of a run that waited for its rate limit."""


@dataclass(frozen=True, slots=True)
class Instrument:
    """One metric: what a dashboard sees of it."""

    name: str
    kind: Kind
    unit: str
    description: str
    buckets: Sequence[float] | None = None
    """The histogram's explicit bucket boundaries, advised to the SDK."""


MESSAGING_PROCESS_DURATION: Final = Instrument(
    "messaging.process.duration",
    "histogram",
    "s",
    "Duration of processing operation.",
    PROCESS_BUCKETS,
)
"""Each attempt at a message, per partition (and `error.type` when it failed)."""

MESSAGING_CONSUMED: Final = Instrument(
    "messaging.client.consumed.messages",
    "counter",
    "{message}",
    "Number of messages that were delivered to the application.",
)
"""Messages delivered to a handler (first attempts; a retry or a deferred run is not counted)."""

PERIODIC_RUNS: Final = Instrument(
    "taskflow.periodic.runs", "counter", "{run}", "Runs of periodic tasks."
)
"""Runs of a periodic task, by outcome: success, failure or cancelled."""

PERIODIC_DURATION: Final = Instrument(
    "taskflow.periodic.duration",
    "histogram",
    "s",
    "Duration of periodic task runs.",
    PERIODIC_BUCKETS,
)
"""How long each periodic run took, by outcome."""

PERIODIC_LATENESS: Final = Instrument(
    "taskflow.periodic.lateness",
    "histogram",
    "s",
    "Start of a periodic run minus its scheduled time (jitter included).",
    LATENESS_BUCKETS,
)
"""How late each periodic run started."""

IDEMPOTENCY_OUTCOMES: Final = Instrument(
    "taskflow.idempotency.outcomes",
    "counter",
    "{job}",
    "What idempotency did with each job: ran, skipped (done, or periodic running elsewhere), "
    "deferred (claimed elsewhere), unguarded (store down, proceed), lost (the claim ran out "
    "under a running handler).",
)
"""The idempotency middleware's outcome for each job."""

RATELIMIT_WAIT: Final = Instrument(
    "taskflow.ratelimit.wait",
    "histogram",
    "s",
    "Seconds a run waited for its rate limit; only runs that waited.",
    WAIT_BUCKETS,
)
"""The wait of each run that had to wait for its rate limit."""

CONSUMER_RETRIES: Final = Instrument(
    "taskflow.consumer.retries",
    "observable_counter",
    "{retry}",
    "Failed attempts at a message that the error policy retries.",
)
"""Retries decided by the error policy, per topic, group and error type; a message sent to a
retry topic also carries ``taskflow.retry.stage`` (1 for the first stage)."""

CONSUMER_DEAD_LETTERS: Final = Instrument(
    "taskflow.consumer.dead_letters",
    "observable_counter",
    "{message}",
    "Messages given up on with a dead-letter topic: sent there (counted once acknowledged), "
    "or skipped when their dead letter can never be written.",
)
"""Dead letters, per topic, group, error type, reason and outcome."""

CONSUMER_REJECTED: Final = Instrument(
    "taskflow.consumer.rejected",
    "observable_counter",
    "{message}",
    "Rejected messages skipped for want of a dead-letter topic.",
)
"""Messages skipped by the error policy, per topic, group and error type."""

CONSUMER_TOMBSTONES_SKIPPED: Final = Instrument(
    "taskflow.consumer.tombstones_skipped",
    "observable_counter",
    "{message}",
    "Tombstones skipped (and committed) because the handler's payload type does not admit None.",
)
"""Tombstones a consumer skipped, per topic and group."""

CONSUMER_LAG: Final = Instrument(
    "taskflow.consumer.lag",
    "observable_gauge",
    "{message}",
    "High watermark of the last fetch minus the lowest unfinished offset.",
)
"""Each consumed partition's lag, as the consumer knows it without asking the broker."""

CONSUMER_IN_FLIGHT: Final = Instrument(
    "taskflow.consumer.in_flight",
    "observable_up_down_counter",
    "{message}",
    "Records fetched and not yet finished (waiting, queued or running).",
)
"""Each consumed partition's records in flight."""

CONSUMER_BUFFERED_BYTES: Final = Instrument(
    "taskflow.consumer.buffered_bytes",
    "observable_up_down_counter",
    "By",
    "Bytes of the records fetched and not yet finished (value, key and headers), counted "
    "against the process's memory budget.",
)
"""Each consumer's share of the process's memory budget."""

PERIODIC_SKIPPED: Final = Instrument(
    "taskflow.periodic.skipped",
    "observable_counter",
    "{run}",
    "Ticks of a periodic task skipped because its previous run was going.",
)
"""Ticks a periodic task skipped."""

HANDLER_STUCK_THREADS: Final = Instrument(
    "taskflow.handler.stuck_threads",
    "observable_gauge",
    "{thread}",
    "Threads of a `def` handler still running calls cut off by its timeout.",
)
"""Threads of a `def` handler still running calls its timeout cut off."""

PUBLISH_UNDELIVERED: Final = Instrument(
    "taskflow.publish.undelivered",
    "observable_counter",
    "{record}",
    "Records published without waiting that were not delivered: refused, failed, or not "
    "acknowledged before the broker closed.",
)
"""Records published with `wait=False` that were lost, per topic and error type."""

INSTRUMENTS: Final = (
    MESSAGING_PROCESS_DURATION,
    MESSAGING_CONSUMED,
    PERIODIC_RUNS,
    PERIODIC_DURATION,
    PERIODIC_LATENESS,
    IDEMPOTENCY_OUTCOMES,
    RATELIMIT_WAIT,
    CONSUMER_RETRIES,
    CONSUMER_DEAD_LETTERS,
    CONSUMER_REJECTED,
    CONSUMER_TOMBSTONES_SKIPPED,
    CONSUMER_LAG,
    CONSUMER_IN_FLIGHT,
    CONSUMER_BUFFERED_BYTES,
    PERIODIC_SKIPPED,
    HANDLER_STUCK_THREADS,
    PUBLISH_UNDELIVERED,
)
"""Every metric taskflow records."""


def create(meter: Meter, instrument: Instrument) -> Any:
    """The synchronous instrument (counter or histogram) `instrument` defines, on `meter`."""
    if instrument.kind == "counter":
        return meter.create_counter(
            instrument.name, unit=instrument.unit, description=instrument.description
        )
    assert instrument.kind == "histogram", f"{instrument.name} is observable: use observe_with"
    return meter.create_histogram(
        instrument.name,
        unit=instrument.unit,
        description=instrument.description,
        explicit_bucket_boundaries_advisory=instrument.buckets,
    )


def observe_with(meter: Meter, instrument: Instrument, callback: Callback) -> None:
    """Register the observable instrument `instrument` defines on `meter`, read by `callback`."""
    make = {
        "observable_counter": meter.create_observable_counter,
        "observable_gauge": meter.create_observable_gauge,
        "observable_up_down_counter": meter.create_observable_up_down_counter,
    }[instrument.kind]
    make(instrument.name, [callback], unit=instrument.unit, description=instrument.description)


def idempotency_outcomes(resources: Resources) -> Counter | None:
    """The `taskflow.idempotency.outcomes` counter, when a real meter provider is in effect."""
    provider = meter_provider(resources)
    if provider is None:
        return None
    counter: Counter = create(provider.get_meter(SCOPE), IDEMPOTENCY_OUTCOMES)
    return counter


class WaitTelemetry:
    """Reports a run's wait for its limit: a span event and a histogram recording.

    The event goes on the span that is current while the limiter runs: the telemetry
    middleware's `process {topic}` span, since that middleware is outermost.

    Args:
        histogram: The `taskflow.ratelimit.wait` histogram.
        worker: The consumer's worker name.
        scope: ``"local"`` or ``"global"``.
    """

    __slots__ = ("attributes", "histogram")

    def __init__(self, histogram: Histogram, *, worker: str, scope: str) -> None:
        self.histogram = histogram
        self.attributes = {"taskflow.worker": worker, "taskflow.rate_limit.scope": scope}

    def __call__(self, seconds: float) -> None:
        trace.get_current_span().add_event(
            WAIT_EVENT, {**self.attributes, "taskflow.rate_limit.waited": seconds}
        )
        self.histogram.record(seconds, self.attributes)


def rate_limit_wait(spec: ConsumerSpec, resources: Resources) -> WaitTelemetry | None:
    """The reporter of one registration's waits, on the meter provider in effect.

    None when telemetry is off: then nothing is built for it.
    """
    if not telemetry_enabled(resources):
        return None
    meter = (resources.meter_provider or metrics.get_meter_provider()).get_meter(SCOPE)
    histogram: Histogram = create(meter, RATELIMIT_WAIT)
    return WaitTelemetry(histogram, worker=spec.name, scope=spec.rate_limit_scope)
