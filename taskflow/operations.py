"""What the operator commands do: run a periodic task once now, read its runs, send a message,
read a dead-letter topic.

These back ``taskflow trigger``, ``taskflow info``, ``taskflow send`` and ``taskflow dlq show``.
Each takes a loaded App, does the I/O and returns what happened; what to print is the CLI's
business.

`trigger` runs the app as ``taskflow run`` would up to its workers (Redis, the broker, the
lifespan and the startup hooks, so ``ctx.state`` and ``ctx.publish`` work as in a replica) but
starts none of them: it runs the one task's handler, through its middleware, once, here, then
tears down. With Redis and ``fleet=True`` the run goes through the schedule store the replicas
use (`taskflow.stores.schedule`): it claims a tick of its own (the moment of the trigger) and the
task's lease, renewed while it runs, so it never overlaps a run of the task on any replica or
another trigger; a tick that comes due meanwhile is skipped by the replica that claims it, as for
any run still going; and the outcome becomes the task's last run. Without Redis (or with
``fleet=False``) it just runs here.
"""

from __future__ import annotations

import heapq
import json
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Final, Literal

from taskflow import validation as check
from taskflow.codec import encode_record, with_content_type
from taskflow.context import Tick
from taskflow.exceptions import ConfigurationError, PublishError, StoreError
from taskflow.runner import open_runtime, resolve_broker
from taskflow.stores.connect import open_stores
from taskflow.stores.lease import LeaseLost, hold, new_owner
from taskflow.stores.schedule import LastRun, ScheduleStore, TickClaim
from taskflow.workers.dead_letter import DeadLetterHeaders, read_dead_letter
from taskflow.workers.scheduled import CLAIM_MARGIN, ScheduledWorker

if TYPE_CHECKING:
    from taskflow.app import App
    from taskflow.message import Headers, TopicPartition
    from taskflow.specs import ScheduleSpec
    from taskflow.types import Codec

__all__ = [
    "Recorded",
    "RunOutcome",
    "Triggered",
    "periodic_task",
    "record_from_text",
    "recorded_runs",
    "send",
    "trigger",
]

logger = logging.getLogger("taskflow")

RunOutcome = Literal["ok", "failed", "cancelled", "lost", "busy", "elsewhere"]


# -- trigger -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Triggered:
    """How a triggered run went.

    Attributes:
        tick: The run: the task, and the moment it was triggered as its scheduled time.
        outcome: ``ok``; ``failed`` (the handler raised: `error`); ``cancelled``; ``lost`` (its
            lease was lost, so it was cancelled); ``busy`` (not run: a run of the task holds its
            lease, `holder`); ``elsewhere`` (not run: another replica claimed the tick,
            `holder`).
        claimed: True when it went through the fleet's records in Redis.
        duration: Seconds the run took; 0 when it did not run.
        error: What the handler raised, for ``failed``.
        holder: For ``busy`` the run holding the lease, for ``elsewhere`` the tick's claimer.
    """

    tick: Tick
    outcome: RunOutcome
    claimed: bool
    duration: float = 0.0
    error: BaseException | None = None
    holder: str | None = None

    @property
    def ran(self) -> bool:
        """True when the handler was called."""
        return self.outcome not in ("busy", "elsewhere")


def periodic_task(app: App, name: str) -> ScheduleSpec:
    """The periodic task called `name`.

    Raises:
        ConfigurationError: naming the app's periodic tasks, when it has none called so.
    """
    for spec in app.schedules:
        if spec.name == name:
            return spec
    tasks = ", ".join(spec.name for spec in app.schedules)
    choices = f"its periodic tasks: {tasks}" if tasks else "it has no periodic tasks"
    raise ConfigurationError(f"app {app.name} has no periodic task {name!r}; {choices}")


async def trigger(app: App, name: str, *, install_signal_handlers: bool = False) -> Triggered:
    """Run the periodic task `name` once now; see the module docstring.

    With `install_signal_handlers`, a first SIGINT or SIGTERM sets ``ctx.stopping`` (a long job
    may finish early) and a second cancels the run.

    Raises:
        ConfigurationError: for an unknown task or an app that cannot start.
        StoreError: when Redis does not answer the claim.
        BrokerError: when the broker cannot be reached.
    """
    spec = periodic_task(app, name)
    async with open_runtime(app, install_signal_handlers=install_signal_handlers) as runtime:
        worker = runtime.worker(spec.name)
        assert isinstance(worker, ScheduledWorker)
        tick = Tick(spec.name, app.clock.now())
        if not worker.fleet:
            return await _attempt(worker, tick, claimed=False)
        return await _claimed(worker, worker.store, tick)


async def _attempt(worker: ScheduledWorker, tick: Tick, *, claimed: bool) -> Triggered:
    """Run the job for `tick` here; "ok", or "failed" with what it raised."""
    started = time.perf_counter()
    try:
        await worker.run_once(tick)
    except Exception as exc:
        return Triggered(tick, "failed", claimed, time.perf_counter() - started, error=exc)
    return Triggered(tick, "ok", claimed, time.perf_counter() - started)


async def _claimed(worker: ScheduledWorker, store: ScheduleStore, tick: Tick) -> Triggered:
    """Claim `tick` and the task's lease for the fleet, run it under the lease, record the end."""
    spec, clock = worker.spec, worker.clock
    owner, now = new_owner(), clock.now()
    found, holder = await store.claim(
        spec.name,
        tick.scheduled_at,
        owner,
        ttl=spec.lease + CLAIM_MARGIN,  # the tick is this trigger's own: it only has to outlive it
        lease=spec.lease,
        started=now,
        next_tick=spec.schedule.next_after(now),
    )
    if found is TickClaim.ELSEWHERE:
        return Triggered(tick, "elsewhere", True, holder=holder)
    if found is TickClaim.BUSY:
        return Triggered(tick, "busy", True, holder=holder)
    started = time.perf_counter()
    outcome: RunOutcome = "cancelled"
    try:
        result = await _leased(worker, store, owner, tick)
        outcome = result.outcome
    finally:
        duration = time.perf_counter() - started
        try:
            await store.finish(spec.name, owner, tick.scheduled_at, outcome, duration)
        except StoreError as exc:
            logger.warning("recording the end of %s failed (%s); its lease runs out", tick, exc)
    return result


async def _leased(
    worker: ScheduledWorker, store: ScheduleStore, owner: str, tick: Tick
) -> Triggered:
    """Run `tick` under `owner`'s lease (`taskflow.stores.lease`); cancel the run if it is lost."""
    spec = worker.spec

    def failed(exc: StoreError) -> None:
        logger.warning("renewing the lease on %s failed (%s); trying again", tick, exc)

    def on_lost() -> None:
        logger.error(
            "lost the lease on %s: a replica may run the task now, so this run is cancelled",
            spec.name,
        )

    async def renew() -> bool:
        return await store.renew(spec.name, owner, spec.lease)

    started = time.perf_counter()
    try:
        return await hold(
            _attempt(worker, tick, claimed=True),
            renew,
            spec.lease,
            patience=spec.lease,  # not renewed for a whole lease: a replica may hold it now
            on_error=failed,
            on_lost=on_lost,
            clock=worker.clock,
            name=spec.name,
        )
    except LeaseLost:
        return Triggered(tick, "lost", True, time.perf_counter() - started)


# -- info ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recorded:
    """What the fleet's schedule store says about one periodic task.

    Attributes:
        last: Its last run (by a replica or a trigger), or None when it never ran.
        next: Its next tick as the replicas last computed it, or None.
    """

    last: LastRun | None
    next: datetime | None


async def recorded_runs(app: App) -> dict[str, Recorded]:
    """The last run and recorded next tick of each of the app's fleet periodic tasks.

    Tasks with ``fleet=False`` keep no records and are left out; so is everything without Redis.

    Raises:
        StoreError: when Redis cannot be reached or does not answer.
        ConfigurationError: for a malformed Redis URL.
    """
    tasks = [spec.name for spec in app.schedules if spec.fleet]
    if not app.redis_url or not tasks:
        return {}
    settings = app.settings
    async with open_stores(
        app.name,
        settings.redis_url,
        username=settings.redis_username,
        password=settings.redis_password,
    ) as stores:
        store, _ = stores.schedule_store(fleet=True)
        return {
            task: Recorded(await store.last_run(task), await store.next_run(task)) for task in tasks
        }


# -- send ----------------------------------------------------------------------------------


def record_from_text(
    app: App,
    text: str,
    *,
    raw: bool = False,
    content_type: str | None = None,
    headers: Sequence[tuple[str, bytes]] = (),
) -> tuple[bytes, Headers]:
    """The value and headers ``taskflow send`` publishes for `text`.

    When `text` parses as JSON (``42``, ``{"id": 1}``, ``"hi"``) its value is encoded as
    `App.publish` encodes it: by the app's codec, or its codec of `content_type`, with that
    codec's ``content-type`` header (a string as its UTF-8 text, without one). ``null`` is the
    codec's null, not a tombstone. Else, and always with `raw`, `text` itself is sent as UTF-8
    with `headers` as given; with `raw`, bytes that are not UTF-8 (which reach `text` as
    surrogate escapes, as in ``sys.argv``) are sent as they were, and with `content_type` too
    they are labelled with it (they are already in that format: Protocol Buffers, say).

    Raises:
        ConfigurationError: when the app has no codec of `content_type`, `text` is not UTF-8
            and `raw` is not set, or `content_type` is given for a `text` that is not JSON
            without `raw`.
        PublishError: when the codec cannot encode the value.
    """
    codec = app.codec if content_type is None else _codec_of(app, content_type)
    if raw:
        given = text.encode("utf-8", "surrogateescape")
        if content_type is None:
            return given, tuple(headers)
        return given, with_content_type(tuple(headers), codec)  # bytes already in that format
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigurationError(
            f"VALUE is not UTF-8 text (from its character {exc.start}): send it with --raw "
            "to send its bytes as they are"
        ) from None
    try:
        value = json.loads(text, parse_constant=_not_json)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python reads
        if content_type is not None:
            raise ConfigurationError(
                f"VALUE is not JSON, so there is nothing to encode as {content_type}: give it "
                f"as JSON, or with --raw to send its bytes as they are, labelled {content_type}"
            ) from None
        return encoded, tuple(headers)
    if value is not None:
        payload, sent = encode_record(value, tuple(headers), codec)
        assert payload is not None
        return payload, sent
    try:  # JSON's null is a value here; publishing None would send a tombstone
        payload = codec.encode(None)
    except (TypeError, ValueError) as exc:
        raise PublishError(f"cannot send null as {codec.content_type}: {exc}") from exc
    return payload, with_content_type(tuple(headers), codec)


def _codec_of(app: App, content_type: str) -> Codec:
    codec = app.codecs.get(content_type)
    if codec is None:
        raise ConfigurationError(
            f"the app has no codec for {content_type!r}: it writes "
            f"{', '.join(app.codecs.content_types())}"
        )
    return codec


def _not_json(constant: str) -> object:
    raise ValueError(f"{constant} is not JSON")  # NaN and Infinity: send them as text


async def send(
    app: App,
    topic: str,
    value: bytes,
    *,
    key: bytes | None = None,
    headers: Headers | Sequence[tuple[str, bytes]] = (),
) -> tuple[TopicPartition, int]:
    """Publish one message through the app's broker, from outside the app; its partition and
    offset.

    The broker is started for this message alone (no lifespan, no hooks) and closed after.

    Raises:
        ConfigurationError: for the memory broker (it lives inside one process, so nothing
            would read the message) or a bad topic name.
        BrokerError: when the broker cannot be reached or refuses the message.
    """
    if app.broker_url.startswith("memory:"):
        raise ConfigurationError(
            f"the app's broker is {app.broker_url}, which lives inside one process, so a message "
            "sent from here reaches nobody: pass --broker kafka://host:port or set TASKFLOW_BROKER"
        )
    check.topic(topic)
    broker = resolve_broker(app)
    await broker.start()
    try:
        return await broker.publish(topic, value, key=key, headers=tuple(headers))
    finally:
        await broker.close()


# -- dead letters --------------------------------------------------------------------------

NOT_TASKFLOW: Final = "(no taskflow headers)"
"""The reason and exception type a summary counts a record without taskflow headers under."""
NO_REASON: Final = "(no reason)"
"""The reason counted for a record with taskflow headers but no `taskflow-reason` (a retry
topic's, say)."""
NO_EXCEPTION: Final = "(no exception type)"
"""The exception type counted for a record with taskflow headers but no exception type."""


@dataclass(frozen=True, slots=True)
class DeadLetters:
    """What a dead-letter topic holds: the newest dead letters and counts over all of it."""

    newest: tuple[DeadLetterHeaders, ...]
    """At most the limit asked for, newest first: by the time each dead letter was written,
    then by partition and offset, both descending."""
    read: int
    """How many records the topic held (every one read, and counted below)."""
    by_reason: tuple[tuple[str, int], ...]
    """(reason, count) over every record read, the most common first."""
    by_exception: tuple[tuple[str, int], ...]
    """(exception type, count) over every record read, the most common first."""


async def dead_letters(app: App, topic: str, limit: int) -> DeadLetters:
    """Read the dead-letter topic `topic` through the app's broker, joining no consumer group.

    Every partition is read from its beginning to its end as of the read's start, so the counts
    cover the whole topic as its retention keeps it; only the newest `limit` are kept.

    Raises:
        ConfigurationError: for the memory broker (nothing of it outlives its process) or a
            topic that does not exist.
        BrokerError: when the broker cannot be reached.
    """
    if app.broker_url.startswith("memory:"):
        raise ConfigurationError(
            f"the app's broker is {app.broker_url}, which lives inside one process, so there is "
            "no dead-letter topic to read: pass --broker kafka://host:port or set TASKFLOW_BROKER"
        )
    check.topic(topic)
    from taskflow.brokers.kafka import KafkaBroker  # here: a memory app never imports aiokafka

    broker = resolve_broker(app)
    assert isinstance(broker, KafkaBroker)  # the only broker besides memory://
    newest: list[tuple[tuple[int, int, int], DeadLetterHeaders]] = []
    reasons: Counter[str] = Counter()
    exceptions: Counter[str] = Counter()
    async for run in broker.read_topic(topic):
        for message in run:
            letter = read_dead_letter(message)
            unknown = NOT_TASKFLOW if not letter.taskflow else None
            reasons[letter.reason or unknown or NO_REASON] += 1
            exceptions[letter.exception_type or unknown or NO_EXCEPTION] += 1
            entry = ((letter.timestamp_ms, letter.partition, letter.offset), letter)
            if len(newest) < limit:
                heapq.heappush(newest, entry)
            elif limit and entry[0] > newest[0][0]:
                heapq.heapreplace(newest, entry)
    ordered = [letter for _, letter in sorted(newest, key=lambda entry: entry[0], reverse=True)]
    return DeadLetters(
        tuple(ordered),
        reasons.total(),
        tuple(reasons.most_common()),
        tuple(exceptions.most_common()),
    )
