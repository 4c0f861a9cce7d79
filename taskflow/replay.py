"""Replaying dead letters: publishing them back to where they came from, each once.

This backs ``taskflow dlq replay``. A dead letter is replayed as the record it was: its value, its
key and the original's own headers (not the `taskflow-` ones), published to its original topic
and partition (`taskflow-original-topic`, `-partition`), with `REPLAYED_FROM` naming the dead
letter (``<dead-letter topic>/<partition>/<offset>``) and `REPLAY_GROUP` the replay's group.

The replay keeps its place in a consumer group of its own on the dead-letter topic, without
joining it, and commits as it goes. For each dead letter it replays, in this order:

1. it commits the dead letter's own offset on the dead-letter partition (everything before it
   there is done);
2. it makes sure the group has, on the original partition, a committed offset at or below where
   the replayed record will land: a *mark* (the partition's end as it was before this run's first
   record to it, and again every `MARK_EVERY` records);
3. it publishes the record and waits for the broker's acknowledgement;
4. it commits the offset after the dead letter.

Only one dead letter is ever between 3 and 4, and it is the one at the committed offset of its
partition. So a replay that starts again first reads the record at each partition's committed
offset, and for one it would replay, reads the original partition from the group's mark to its
end: when a record there names this dead letter and this group, the dead letter was published
and is committed as done, not published again. A replay stopped at any point (Ctrl-C, SIGKILL, a
lost broker) and run again therefore publishes each dead letter once and skips none, provided
the broker has written or dropped the interrupted run's last record by the time the next run
reads the original partition (a produce request received but not yet written then would be
missed; only a transactional producer fences off a writer that is gone, and not every broker has
transactions).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, Literal, get_args

from taskflow import validation as check
from taskflow.exceptions import ConfigurationError, RecordRefused, RecordTooLarge
from taskflow.middleware.ratelimit import smooth_limiter
from taskflow.policy import DeadLetterReason
from taskflow.runner import resolve_broker
from taskflow.specs import consumer_stages
from taskflow.workers.dead_letter import HEADER_PREFIX, DeadLetterHeaders, read_dead_letter

if TYPE_CHECKING:
    from aiolimiter import AsyncLimiter

    from taskflow.app import App
    from taskflow.brokers.kafka import GroupReader, KafkaBroker
    from taskflow.message import Headers, Message
    from taskflow.ratelimit import RateLimit

__all__ = [
    "NOT_A_DEAD_LETTER",
    "NOT_TASKFLOW",
    "NO_ORIGIN",
    "NO_PARTITION",
    "NO_TOPIC",
    "REASONS",
    "REPLAYED_FROM",
    "REPLAY_GROUP",
    "VALUE_LEFT_OUT",
    "Filters",
    "ReplaySummary",
    "Step",
    "default_group",
    "parse_since",
    "replay",
]

REPLAYED_FROM: Final = HEADER_PREFIX + "replayed-from"
"""The header of a replayed record naming its dead letter: ``<topic>/<partition>/<offset>``."""
REPLAY_GROUP: Final = HEADER_PREFIX + "replay-group"
"""The header of a replayed record naming the replay's consumer group."""
REASONS: Final = get_args(DeadLetterReason)
"""The reasons a dead letter is given up for, as `--reason` takes them."""

NOT_TASKFLOW: Final = "no taskflow headers"
NOT_A_DEAD_LETTER: Final = "not a dead letter"
NO_ORIGIN: Final = "origin unknown"
VALUE_LEFT_OUT: Final = "value left out"
NO_TOPIC: Final = "original topic gone"
NO_PARTITION: Final = "original partition gone"
UNKNOWN: Final = "(not given)"
"""What a dead letter's reason or exception type is counted under when its headers lack it."""

MARK_EVERY: Final = 1000
"""Records replayed to one original partition before its mark is moved up to its end."""
_SINCE_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_RELATIVE = re.compile(r"\s*(\d+)\s*([smhdw])\s*")


def parse_since(text: str, now: datetime) -> datetime:
    """The moment `text` names: ISO 8601 (``2026-12-04T10:00:00Z``; without an offset, UTC) or
    a duration before `now` (``90s``, ``30m``, ``2h``, ``7d``, ``1w``).

    Raises:
        ConfigurationError: naming the forms it takes (or the year 1, for a time before it; or
            now, for a time after it).
    """
    if match := _RELATIVE.fullmatch(text.lower()):
        count, unit = match.groups()
        try:
            return now - timedelta(seconds=int(count) * _SINCE_UNITS[unit])
        except OverflowError:
            raise ConfigurationError(
                f"--since takes a time after the year 1, got {text!r}"
            ) from None
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigurationError(
            f"--since takes an ISO 8601 time (2026-12-04T10:00:00Z) or a time before now "
            f"(30m, 2h, 7d), got {text!r}"
        ) from None
    moment = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    if moment > now:
        raise ConfigurationError(
            f"--since {text.strip()} is in the future ({now.isoformat(timespec='seconds')} "
            "now): no dead letter was written after it"
        )
    return moment


@dataclass(frozen=True, slots=True)
class Filters:
    """Which dead letters to replay; None matches every one."""

    reason: str | None = None
    """``rejected`` or ``exhausted``."""
    error: str | None = None
    """The exception type: its qualified name (``builtins.KeyError``) or its last part."""
    since: datetime | None = None
    """Dead letters written at or after this moment."""
    since_text: str | None = None
    """`since` as it was given (``2h``): what the default group name is made from."""

    @property
    def since_moves(self) -> bool:
        """True when `since` was given as a time before now (``2h``): each run counts it from
        its own start, so a rerun's window has moved on."""
        text = self.since_text
        return text is not None and _RELATIVE.fullmatch(text.lower()) is not None

    def matches(self, letter: DeadLetterHeaders) -> bool:
        """True when `letter` passes every filter."""
        if self.reason is not None and letter.reason != self.reason:
            return False
        if self.error is not None and not _same_type(letter.exception_type, self.error):
            return False
        moment = self.since
        return moment is None or letter.timestamp_ms >= moment.timestamp() * 1000


def _same_type(qualified: str | None, wanted: str) -> bool:
    if qualified is None:
        return False
    return wanted in (qualified, qualified.rpartition(".")[2])


def default_group(topic: str, filters: Filters) -> str:
    """The consumer group a replay of `topic` with `filters` keeps its place in by default.

    The same topic and filters give the same group (a rerun resumes), other filters another
    one (a replay of its own, from the start).
    """
    given = [topic, filters.reason, filters.error, filters.since_text]
    digest = hashlib.sha256(json.dumps(given).encode()).hexdigest()[:12]
    return f"taskflow-replay.{topic}.{digest}"


Outcome = Literal["replayed", "would replay", "already replayed", "skipped"]


@dataclass(frozen=True, slots=True)
class Step:
    """What became of one dead letter, reported as it happens."""

    letter: DeadLetterHeaders
    outcome: Outcome
    target: tuple[str, int] | None = None
    """The original topic and partition it is (or would be, or was) replayed to."""
    offset: int | None = None
    """The offset the replayed record got, for ``replayed``."""
    why: str | None = None
    """Why it was skipped: `NOT_TASKFLOW`, `NO_ORIGIN`, `NOT_A_DEAD_LETTER`, `VALUE_LEFT_OUT`,
    `NO_TOPIC` or `NO_PARTITION`."""


@dataclass(frozen=True, slots=True)
class ReplaySummary:
    """How a replay went."""

    group: str
    replayed: int
    """Published (in a dry run: that would be)."""
    already: int
    """Found published by an interrupted run, so not published again."""
    skipped: tuple[tuple[str, int], ...]
    """(why, count), the most common first: matched, but cannot be replayed."""
    filtered_out: int
    filtered_reasons: tuple[tuple[str, int], ...]
    """(reason, count) over the dead letters filtered out, the most common first."""
    filtered_exceptions: tuple[tuple[str, int], ...]
    """(exception type, count) over the dead letters filtered out, the most common first."""
    finished: bool
    """True when it read to the topic's end; False when the limit or a stop ended it first."""
    stopped: bool
    """True when a stop (SIGINT, SIGTERM) ended it."""


async def replay(
    app: App,
    topic: str,
    *,
    filters: Filters,
    group: str,
    limit: int | None = None,
    rate: RateLimit | None = None,
    dry_run: bool = False,
    report: Callable[[Step], None] = lambda step: None,
    opened: Callable[[], None] = lambda: None,
    stopping: asyncio.Event | None = None,
) -> ReplaySummary:
    """Replay the dead letters on `topic` that match `filters`; see the module docstring.

    `opened` is called once the topic is found, then each dead letter is reported to `report`
    as it is dealt with. A dry run publishes and commits nothing: it reports what a replay
    would publish now. Setting `stopping` ends the replay after the dead letter in hand.

    Raises:
        ConfigurationError: for the memory broker, a topic that does not exist, or a `group`
            that one of the app's consumers joins.
        BrokerError: when the broker cannot be reached or fails meanwhile.
    """
    if app.broker_url.startswith("memory:"):
        raise ConfigurationError(
            f"the app's broker is {app.broker_url}, which lives inside one process, so there is "
            "no dead-letter topic here to replay from: pass --broker kafka://host:port or set "
            "TASKFLOW_BROKER"
        )
    check.topic(topic)
    if (consumer := _consumer_in(app, group)) is not None:
        raise ConfigurationError(
            f"--group {group} is the consumer group of the app's consumer {consumer}, and a "
            "replay commits in its group (on the dead-letter topic, and on each partition it "
            "replays to), which would move that consumer past records: name a group of the "
            "replay's own, or leave --group out"
        )
    from taskflow.brokers.kafka import KafkaBroker  # here: a memory app never imports aiokafka

    broker = resolve_broker(app)
    assert isinstance(broker, KafkaBroker)  # the only broker besides memory://
    async with broker.group_reader(topic, group) as reader:
        opened()
        if not dry_run:
            await broker.start()
        try:
            run = _Replay(
                reader,
                broker,
                topic,
                group,
                filters,
                report=report,
                dry_run=dry_run,
                limit=limit,
                limiter=None if rate is None else smooth_limiter(rate.per_second),
                stopping=stopping or asyncio.Event(),
            )
            await run.resolve()
            finished = await run.all()
        finally:
            await broker.close()
    return run.summary(finished)


def _consumer_in(app: App, group: str) -> str | None:
    """The name of the app's consumer (or retry stage) that joins `group`, if one does."""
    for spec in app.consumers:
        for stage in consumer_stages(spec):
            if stage.consumer_group == group:
                return stage.name
    return None


def _refused(message: Message, target: tuple[str, int], exc: RecordRefused) -> RecordRefused:
    """The error a record the broker will never take ends the replay with: it names the dead
    letter, and says how to go on (the replay stopped before it; nothing after it was lost)."""
    where = f"{message.topic}[{message.partition}]@{message.offset}"
    if isinstance(exc, RecordTooLarge):
        fix = (
            "raise max_request_size (TASKFLOW_KAFKA_MAX_REQUEST_SIZE, and the topic's "
            "max.message.bytes if the broker refused it)"
        )
    else:
        fix = "mend what the broker refused it for"
    return type(exc)(
        f"the dead letter {where} cannot be published back to {target[0]}[{target[1]}]: {exc}; "
        f"the replay stopped before it: {fix}, then run the same command again"
    )


class _Replay:
    """One replay's state: where it is, what it counted."""

    def __init__(
        self,
        reader: GroupReader,
        broker: KafkaBroker,
        topic: str,
        group: str,
        filters: Filters,
        *,
        report: Callable[[Step], None],
        dry_run: bool,
        limit: int | None,
        limiter: AsyncLimiter | None,
        stopping: asyncio.Event,
    ) -> None:
        self.reader, self.broker, self.topic, self.group = reader, broker, topic, group
        self.filters, self.report, self.dry_run = filters, report, dry_run
        self.limit, self.limiter, self.stopping = limit, limiter, stopping
        self.done: set[tuple[int, int]] = set()  # published by an interrupted run
        self.committed: dict[int, int] = {}  # dead-letter partition: the offset committed
        self.position: dict[int, int] = {}  # dead-letter partition: the next offset to look at
        self.marks: dict[tuple[str, int], int] = {}  # original partition: its committed mark
        self.found: dict[tuple[str, int], set[str]] = {}  # replayed-from values after the mark
        self.since_mark: dict[tuple[str, int], int] = {}  # published since this run's last mark
        self.replayed = self.already = self.filtered_out = 0
        self.skipped: Counter[str] = Counter()
        self.filtered_reasons: Counter[str] = Counter()
        self.filtered_exceptions: Counter[str] = Counter()

    # -- after an interruption --------------------------------------------------------

    async def resolve(self) -> None:
        """Find the dead letters an interrupted run published but did not commit as done."""
        for partition, message in (await self.reader.firsts()).items():
            self.committed[partition] = message.offset
            letter = read_dead_letter(message)
            target = await self._target(letter)
            if isinstance(target, str) or not self.filters.matches(letter):
                continue
            if _replayed_from(letter) not in await self._found_after_mark(*target):
                continue
            self.done.add((partition, message.offset))
            self.already += 1
            self.report(Step(letter, "already replayed", target))
            if not self.dry_run:
                await self._commit(partition, message.offset + 1)

    async def _found_after_mark(self, topic: str, partition: int) -> set[str]:
        """The dead letters this group replayed to `topic` `partition` past its mark."""
        if (topic, partition) not in self.found:
            mark = await self.reader.committed(topic, partition)
            seen: set[str] = set()
            if mark is not None:
                self.marks[topic, partition] = mark
                async with contextlib.aclosing(self.reader.scan(topic, partition, mark)) as runs:
                    async for run in runs:
                        seen.update(self._ours(message) for message in run)
            self.found[topic, partition] = seen
        return self.found[topic, partition]

    def _ours(self, message: Message) -> str:
        """The dead letter `message` was replayed from by this group, or ``""``."""
        values = dict(message.headers)
        if values.get(REPLAY_GROUP, b"").decode(errors="replace") != self.group:
            return ""
        return values.get(REPLAYED_FROM, b"").decode(errors="replace")

    # -- the replay -------------------------------------------------------------------

    async def all(self) -> bool:
        """Deal with every dead letter up to the topic's end; False when stopped before it."""
        async with contextlib.aclosing(self.reader.records()) as runs:
            async for run in runs:
                for message in run:
                    if self._over():
                        await self._commit_positions()
                        return False
                    await self._one(message)
                await self._commit_positions()
        return True

    def _over(self) -> bool:
        return self.stopping.is_set() or (self.limit is not None and self.replayed >= self.limit)

    async def _one(self, message: Message) -> None:
        partition, offset = message.partition, message.offset
        if (partition, offset) not in self.done:
            letter = read_dead_letter(message)
            target = await self._target(letter)
            if target != NOT_TASKFLOW and not self.filters.matches(letter):
                self._filter_out(letter)
            elif isinstance(target, str):
                self.skipped[target] += 1
                self.report(Step(letter, "skipped", why=target))
            elif not await self._replay(message, letter, target):
                return  # stopped while it waited for its turn: not dealt with
        self.position[partition] = offset + 1

    def _filter_out(self, letter: DeadLetterHeaders) -> None:
        """Count `letter` as filtered out, by its reason and exception type (`dlq show`'s)."""
        self.filtered_out += 1
        self.filtered_reasons[letter.reason or UNKNOWN] += 1
        self.filtered_exceptions[letter.exception_type or UNKNOWN] += 1

    async def _target(self, letter: DeadLetterHeaders) -> tuple[str, int] | str:
        """Where `letter` goes back to, or why it cannot."""
        topic, partition = letter.original_topic, letter.original_partition
        if not letter.taskflow:
            return NOT_TASKFLOW
        if topic is None or partition is None:
            return NO_ORIGIN
        if letter.reason is None:  # a retry topic's record: its retry stage delivers it
            return NOT_A_DEAD_LETTER
        if letter.value_omitted is not None:
            return VALUE_LEFT_OUT
        count = await self.reader.partition_count(topic)
        if count is None:
            return NO_TOPIC
        return (topic, partition) if 0 <= partition < count else NO_PARTITION

    async def _replay(
        self, message: Message, letter: DeadLetterHeaders, target: tuple[str, int]
    ) -> bool:
        """Publish `message` back to `target` as the module docstring says; False when a stop
        came while it waited for its turn."""
        if self.dry_run:
            self.replayed += 1
            self.report(Step(letter, "would replay", target))
            return True
        if not await self._turn():
            return False
        partition, offset = message.partition, message.offset
        if self.committed.get(partition) != offset:
            await self._commit(partition, offset)
        await self._mark(*target)
        headers: Headers = (
            *_own_headers(message),
            (REPLAYED_FROM, _replayed_from(letter).encode()),
            (REPLAY_GROUP, self.group.encode()),
        )
        try:
            _, landed = await self.broker.publish(
                target[0], message.value, key=message.key, headers=headers, partition=target[1]
            )
        except RecordRefused as exc:
            raise _refused(message, target, exc) from exc
        await self._commit(partition, offset + 1)
        self.replayed += 1
        self.report(Step(letter, "replayed", target, landed))
        return True

    async def _turn(self) -> bool:
        """Wait for the rate limit to allow one more; False when a stop comes first."""
        if self.limiter is None:
            return not self.stopping.is_set()
        async with asyncio.TaskGroup() as group:
            turn = group.create_task(self.limiter.acquire())
            stop = group.create_task(self.stopping.wait())
            await asyncio.wait((turn, stop), return_when=asyncio.FIRST_COMPLETED)
            turn.cancel()
            stop.cancel()
        return not self.stopping.is_set()

    async def _mark(self, topic: str, partition: int) -> None:
        """Make sure the group's mark on the original partition is at or below where the next
        record lands: a rerun's search for it starts there.

        Ends only grow, so any mark this run committed is still below every record it publishes
        after: the mark is moved up (to the partition's end now) once per `MARK_EVERY` records,
        which bounds how far a rerun reads, and costs no round trip in between.
        """
        key = (topic, partition)
        if 0 < self.since_mark.get(key, 0) < MARK_EVERY:
            self.since_mark[key] += 1
            return
        end = await self.reader.end_offset(topic, partition)
        if end > self.marks.get(key, -1):
            await self.reader.commit(topic, partition, end)
            self.marks[key] = end
        self.since_mark[key] = 1

    async def _commit(self, partition: int, offset: int) -> None:
        await self.reader.commit(self.topic, partition, offset)
        self.committed[partition] = offset

    async def _commit_positions(self) -> None:
        if self.dry_run:
            return
        for partition, offset in self.position.items():
            if self.committed.get(partition) != offset:
                await self._commit(partition, offset)

    def summary(self, finished: bool) -> ReplaySummary:
        return ReplaySummary(
            group=self.group,
            replayed=self.replayed,
            already=self.already,
            skipped=tuple(self.skipped.most_common()),
            filtered_out=self.filtered_out,
            filtered_reasons=tuple(self.filtered_reasons.most_common()),
            filtered_exceptions=tuple(self.filtered_exceptions.most_common()),
            finished=finished,
            stopped=self.stopping.is_set(),
        )


def _replayed_from(letter: DeadLetterHeaders) -> str:
    return f"{letter.topic}/{letter.partition}/{letter.offset}"


def _own_headers(message: Message) -> Headers:
    """The original's own headers a dead letter carries: all but taskflow's."""
    return tuple(
        (name, value) for name, value in message.headers if not name.startswith(HEADER_PREFIX)
    )
