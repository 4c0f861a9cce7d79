"""What the dashboard shows, gathered into plain values: the fleet, its consumers' partitions,
the periodic tasks and the dead-letter topics of one app.

Everything is read: the replicas' snapshots from the fleet store (or, without Redis, this
replica's own), the periodic tasks' records from the fleet's schedule store, and the dead-letter
topics through the same reading as ``taskflow dlq show``, at most every `DEAD_LETTER_MAX_AGE`
seconds. Nothing here writes, and no secret is kept: URLs are masked as ``taskflow info`` masks
them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec

from taskflow.config import mask_url
from taskflow.exceptions import TaskflowError

if TYPE_CHECKING:
    from taskflow.app import App
    from taskflow.fleet import Snapshots
    from taskflow.operations import DeadLetters
    from taskflow.stores.fleet import FleetMember, FleetStore
    from taskflow.stores.schedule import ScheduleStore

__all__ = [
    "DEAD_LETTER_MAX_AGE",
    "UNKNOWN_APP_REF",
    "DeadLetterReader",
    "Sources",
    "gather",
]

logger = logging.getLogger(__name__)

UNKNOWN_APP_REF = "MODULE:APP"  # in the replay command, for an app no command started
DEAD_LETTER_MAX_AGE = 30.0
"""Seconds a dead-letter topic's reading is shown again before it is read anew."""
DEAD_LETTER_TIMEOUT = 15.0
"""Seconds a reading of a dead-letter topic may take."""
NEWEST_DEAD_LETTERS = 5
MISSED_MARGIN = 5.0
"""Seconds after its time a tick without a run counts as missed (claims take a moment)."""
MISSED_CAP = 1000


class _PartitionShape(msgspec.Struct):
    topic: str
    partition: int
    committed: int | None = None
    high_watermark: int | None = None
    lag: int | None = None
    in_flight: int = 0
    paused: bool = False
    messages_per_s: float | None = None


class _WorkerShape(msgspec.Struct):
    name: str
    kind: str | None = None
    group: str | None = None
    partitions: list[_PartitionShape] = []
    in_flight: int = 0
    errors_per_s: float | None = None
    retries: int = 0
    dead_letters: int = 0
    last_run: datetime | None = None
    next_run: datetime | None = None


class _StatusShape(msgspec.Struct):
    """What the page reads of a replica's /status body, and the types it reads them as (other
    fields are not looked at): a snapshot whose status does not fit, written by another
    taskflow version say, is left off the page with a line saying why."""

    workers: list[_WorkerShape] = []


@dataclass
class DeadLetterReader:
    """Reads the app's dead-letter topics, at most every `max_age` seconds each, one at a time."""

    app: App
    max_age: float = DEAD_LETTER_MAX_AGE
    _read: dict[str, tuple[float, DeadLetters | str]] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def topic(self, topic: str) -> DeadLetters | str:
        """What `topic` holds, or why it could not be read."""
        async with self._lock:
            known = self._read.get(topic)
            if known is not None and time.monotonic() - known[0] < self.max_age:
                return known[1]
            found = await self._fresh(topic)
            self._read[topic] = (time.monotonic(), found)
            return found

    async def _fresh(self, topic: str) -> DeadLetters | str:
        from taskflow import operations

        try:
            async with asyncio.timeout(DEAD_LETTER_TIMEOUT):
                return await operations.dead_letters(self.app, topic, NEWEST_DEAD_LETTERS)
        except TimeoutError:
            return f"reading {topic} took over {DEAD_LETTER_TIMEOUT:g}s"
        except TaskflowError as exc:
            return str(exc)


@dataclass
class Sources:
    """Where the dashboard of one app reads.

    Attributes:
        app: The app.
        fleet: The fleet store; None without Redis.
        local: This replica's snapshots, shown when there is no fleet store.
        schedules: The fleet's schedule store; None without Redis.
        dead_letters: The dead-letter reader; None to leave the panel out.
        app_ref: How ``taskflow`` commands name the app, in the replay command shown; a
            placeholder when it is not known (the app was not started by a ``taskflow`` command).
    """

    app: App
    fleet: FleetStore | None = None
    local: Snapshots | None = None
    schedules: ScheduleStore | None = None
    dead_letters: DeadLetterReader | None = None
    app_ref: str = UNKNOWN_APP_REF


async def gather(sources: Sources) -> dict[str, Any]:
    """Everything the page shows, as plain values (JSON-ready)."""
    app = sources.app
    members, problems = await _members(sources)
    fleet_failed = problems[0] if problems else None
    members = _readable(members, problems)
    now = time.time()
    return {
        "app": app.name,
        "broker": mask_url(app.broker_url),
        "redis": mask_url(app.redis_url) if app.redis_url else None,
        "generated": _iso(now),
        "problems": problems,
        "fleet": [_replica(member, now) for member in members],
        "consumers": _consumers(members),
        "schedules": await _schedules(sources, members, problems, fleet_failed),
        "dead_letters": await _dead_letters(sources),
    }


async def _members(sources: Sources) -> tuple[list[FleetMember], list[str]]:
    from taskflow.stores.fleet import FleetMember

    if sources.fleet is not None:
        try:
            return await sources.fleet.members(), []
        except TaskflowError as exc:
            problem = f"the fleet could not be read, showing this replica only: {exc}"
            local = [] if sources.local is None else [FleetMember(sources.local.take(), False)]
            return local, [problem]
    if sources.local is not None:
        return [FleetMember(sources.local.take(), gone=False)], []
    return [], []


def _readable(members: list[FleetMember], problems: list[str]) -> list[FleetMember]:
    """The members whose status the page can read; a line in `problems` for each other."""
    readable = []
    for member in members:
        try:
            msgspec.convert(member.snapshot.status, _StatusShape)
        except msgspec.ValidationError as exc:
            snapshot = member.snapshot
            problems.append(
                f"replica {snapshot.host}:{snapshot.pid} (taskflow {snapshot.version}) is not "
                f"shown: its status cannot be read here: {exc}"
            )
        else:
            readable.append(member)
    return readable


def _replica(member: FleetMember, now: float) -> dict[str, Any]:
    snapshot = member.snapshot
    return {
        "replica": snapshot.replica,
        "name": f"{snapshot.host}:{snapshot.pid}",
        "host": snapshot.host,
        "pid": snapshot.pid,
        "instance_id": snapshot.instance_id,
        "version": snapshot.version,
        "started": _iso(snapshot.started),
        "uptime": _span(now - snapshot.started) if not member.gone else None,
        "state": "gone" if member.gone and snapshot.state != "stopped" else snapshot.state,
        "gone": member.gone,
        "last_seen": _iso(snapshot.published),
        "last_seen_ago": _span(max(now - snapshot.published, 0)),
        "loop_lag": snapshot.status.get("loop_lag"),
    }


def _consumers(members: list[FleetMember]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for member in members:
        if member.gone:
            continue
        owner = f"{member.snapshot.host}:{member.snapshot.pid}"
        for worker in member.snapshot.status.get("workers", []):
            if worker.get("kind") != "consumer":
                continue
            for p in worker.get("partitions", []):
                rows.append(
                    {
                        "registration": worker["name"],
                        "group": worker.get("group"),
                        "topic": p["topic"],
                        "partition": p["partition"],
                        "owner": owner,
                        "committed": p.get("committed"),
                        "high_watermark": p.get("high_watermark"),
                        "lag": p.get("lag"),
                        "in_flight": p.get("in_flight", 0),
                        "paused": p.get("paused", False),
                        "messages_per_s": p.get("messages_per_s"),
                        "errors_per_s": worker.get("errors_per_s"),
                        "retries": worker.get("retries", 0),
                        "dead_letters": worker.get("dead_letters", 0),
                    }
                )
    rows.sort(
        key=lambda r: (-(r["lag"] if r["lag"] is not None else -1), r["topic"], r["partition"])
    )
    return rows


async def _schedules(
    sources: Sources, members: list[FleetMember], problems: list[str], failed: str | None
) -> list[dict[str, Any]]:
    """The periodic tasks' rows. Once a read of Redis failed (`failed`, the fleet's), the other
    tasks' runs are not read: a Redis that hangs costs the page one timeout, not one a task."""
    running = _running_now(members)
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    unread: list[str] = []
    for spec in sources.app.schedules:
        row: dict[str, Any] = {
            "task": spec.name,
            "schedule": spec.schedule.describe(),
            "fleet": spec.fleet,
            "running_on": running.get(spec.name, []),
            "last_tick": None,
            "last_replica": None,
            "outcome": None,
            "duration": None,
            "next_tick": None,
            "missed": None,
        }
        local = _local_schedule(members, spec.name)
        if local is not None:
            row["last_tick"], row["next_tick"] = local.get("last_run"), local.get("next_run")
        if spec.fleet and sources.schedules is not None and failed is not None:
            unread.append(spec.name)
        elif spec.fleet and sources.schedules is not None:
            try:
                await _recorded(sources.schedules, spec.name, row)
            except TaskflowError as exc:
                failed = f"the runs of {spec.name} could not be read: {exc}"
                problems.append(failed)
        if row["last_tick"] is not None:
            row["missed"] = _missed(spec.schedule, datetime.fromisoformat(row["last_tick"]), now)
        rows.append(row)
    if unread:
        problems.append(f"the runs of {', '.join(unread)} were not read: {failed}")
    return rows


async def _recorded(store: ScheduleStore, task: str, row: dict[str, Any]) -> None:
    last, upcoming = await store.last_run(task), await store.next_run(task)
    if last is not None:
        row["last_tick"] = last.tick.isoformat()
        row["last_replica"] = last.replica
        row["outcome"] = last.outcome
        row["duration"] = last.duration
        if last.outcome == "running" and last.replica not in row["running_on"]:
            row["running_on"].append(last.replica)
    if upcoming is not None:
        row["next_tick"] = upcoming.isoformat()


def _running_now(members: list[FleetMember]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for member in members:
        if member.gone:
            continue
        for worker in member.snapshot.status.get("workers", []):
            if worker.get("kind") == "periodic" and worker.get("in_flight"):
                name = f"{member.snapshot.host}:{member.snapshot.pid}"
                found.setdefault(worker["name"], []).append(name)
    return found


def _local_schedule(members: list[FleetMember], task: str) -> dict[str, Any] | None:
    for member in members:
        for worker in member.snapshot.status.get("workers", []):
            if worker.get("name") == task and worker.get("kind") == "periodic":
                return dict(worker)
    return None


def _missed(schedule: Any, last: datetime, now: datetime) -> int:
    """Ticks after the last run's that came over MISSED_MARGIN ago without a run."""
    count, tick = 0, schedule.next_after(last)
    while tick <= now - timedelta(seconds=MISSED_MARGIN) and count < MISSED_CAP:
        count += 1
        tick = schedule.next_after(tick)
    return count


async def _dead_letters(sources: Sources) -> list[dict[str, Any]]:
    reader = sources.dead_letters
    topics = sorted({spec.dead_letter for spec in sources.app.consumers if spec.dead_letter})
    rows: list[dict[str, Any]] = []
    for topic in topics:
        row: dict[str, Any] = {"topic": topic, "count": None, "newest": [], "problem": None}
        row["replay"] = f"taskflow dlq replay {sources.app_ref} {topic}"
        found = await reader.topic(topic) if reader is not None else "not read here"
        if isinstance(found, str):
            row["problem"] = found
        else:
            row["count"] = found.read
            row["newest"] = [
                {
                    "time": _written(letter.timestamp_ms),
                    "where": f"{letter.topic}[{letter.partition}]@{letter.offset}",
                    "origin": (
                        f"{letter.original_topic}[{letter.original_partition}]"
                        f"@{letter.original_offset}"
                        if letter.taskflow
                        else None
                    ),
                    "reason": letter.reason,
                    "exception": letter.exception_type,
                    "message": ((letter.exception_message or "").splitlines() or [""])[0][:200],
                }
                for letter in found.newest
            ]
        rows.append(row)
    return rows


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds")


def _written(timestamp_ms: int) -> str:
    """When a record was written, or its timestamp as it is when no date can show it (a
    record's timestamp is whatever its producer chose)."""
    try:
        return _iso(timestamp_ms / 1000)
    except (ValueError, OverflowError, OSError):
        return f"(timestamp {timestamp_ms} ms)"


def _span(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{secs}s"
