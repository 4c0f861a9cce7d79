"""How the built-in workers are: the values their `status()` returns.

One value per level: `PartitionStatus` is what a consumer worker knows of one partition it
consumes (the broker's own view of a partition is `taskflow.brokers.base.FetchPosition`);
`ConsumerStatus` and `PeriodicStatus` are the whole worker's. /status, the observable instruments
and the tests all read these, never the workers' internals. Everything here is known locally:
making one never asks the broker, so a metrics collection may do it on its own thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from taskflow.message import TopicPartition
from taskflow.types import WorkerStatus

__all__ = ["ConsumerStatus", "PartitionStatus", "PeriodicStatus", "PolicyCount"]


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    """What a consumer worker knows, locally, of one partition assigned to it."""

    tp: TopicPartition
    committed: int | None
    """The offset this consumer last committed, or None before its first commit."""
    high_watermark: int | None
    """The offset the next record written will get, as of the last fetch; None until fetched."""
    lag: int | None
    """High watermark minus the lowest offset not finished yet (the one committed next; before
    any record arrived, the fetch position). None until the partition has been fetched once."""
    in_flight: int
    """Records fetched and not finished (waiting, queued in a lane, or running)."""
    paused: bool
    """True while fetching is paused for backpressure: the partition's own (``max_buffered``)
    or the process's memory budget; on a retry stage, also while its next record is not due."""

    def as_json(self) -> dict[str, Any]:
        """The partition's entry in /status."""
        return {
            "topic": self.tp.topic,
            "partition": self.tp.partition,
            "committed": self.committed,
            "high_watermark": self.high_watermark,
            "lag": self.lag,
            "paused": self.paused,
        }


@dataclass(frozen=True, slots=True)
class PolicyCount:
    """How often the error policy took one action, for one topic and error type."""

    action: str
    """``retry`` (in place), ``retry_topic`` (sent to a retry stage), ``skip`` (rejected, no
    dead-letter topic), ``skip_tombstone`` (a tombstone the handler's payload type does not
    admit) or ``dead_letter``."""
    topic: str
    error: type[BaseException]
    reason: str | None
    """Why a message was given up on: ``rejected``, ``exhausted`` or ``unretryable``; None for
    a retry."""
    fate: str | None
    """For a dead letter not written whole: ``value_omitted`` or ``dropped``."""
    count: int
    stage: int | None = None
    """For ``retry_topic``, the retry stage the messages were sent to (1 for the first)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerStatus(WorkerStatus):
    """A consumer worker's status."""

    topics: tuple[str, ...]
    group: str
    partitions: tuple[PartitionStatus, ...]
    """Every partition assigned to it, in order."""
    in_flight: int
    buffered_bytes: int = 0
    """The bytes of the fetched records it holds, unfinished (value, key and headers)."""
    buffer_budget: int = 0
    """The memory budget of the process, shared by every consumer (``buffer_bytes``)."""
    rebalances: int
    last_poll: float | None
    """`time.monotonic()` of the last fetch, or None before the first."""
    policy_counts: tuple[PolicyCount, ...]
    stuck_threads: int | None
    """Threads of a `def` handler still running calls cut off by its timeout; None for async."""
    retry_topics: tuple[str, ...] = ()
    """Where its failures wait (its retry stages' topics); none when it retries in place."""
    dead_letter: str | None = None
    """Its dead-letter topic, or None."""

    @property
    def assigned(self) -> frozenset[TopicPartition]:
        """The partitions assigned to it."""
        return frozenset(p.tp for p in self.partitions)

    @property
    def paused(self) -> frozenset[TopicPartition]:
        """The partitions paused for backpressure."""
        return frozenset(p.tp for p in self.partitions if p.paused)

    @property
    def lag(self) -> int | None:
        """The lag summed over the partitions whose lag is known; None when none is."""
        known = [p.lag for p in self.partitions if p.lag is not None]
        return sum(known) if known else None

    def count(self, action: str) -> int:
        """How often the error policy took `action` (``retry``, ``skip``, ``skip_tombstone``,
        ``dead_letter``)."""
        return sum(c.count for c in self.policy_counts if c.action == action)

    def as_json(self, now: float | None = None) -> dict[str, Any]:
        """The consumer's fields in /status; `now` is `time.monotonic()` for the poll's age."""
        age = None
        if self.last_poll is not None and now is not None:
            age = round(now - self.last_poll, 3)
        return {
            "kind": self.kind,
            "topics": list(self.topics),
            "group": self.group,
            "partitions": [p.as_json() for p in self.partitions],
            "lag": self.lag,
            "in_flight": self.in_flight,
            "buffered_bytes": self.buffered_bytes,
            "buffer_budget": self.buffer_budget,
            "rebalances": self.rebalances,
            "last_poll_age": age,
            "retry_topics": list(self.retry_topics),
            "dead_letter": self.dead_letter,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PeriodicStatus(WorkerStatus):
    """A periodic task's status."""

    schedule: str
    """The schedule, described."""
    last_tick: datetime | None
    next_tick: datetime
    running: bool
    """True while a run is going on in this process."""
    runs: int
    failures: int
    skipped: int
    """Ticks not run because the previous run was still going."""
    stuck_threads: int | None

    def as_json(self, now: float | None = None) -> dict[str, Any]:
        """The periodic task's fields in /status."""
        return {
            "kind": self.kind,
            "schedule": self.schedule,
            "last_run": self.last_tick.isoformat() if self.last_tick is not None else None,
            "next_run": self.next_tick.isoformat(),
            "in_flight": 1 if self.running else 0,
            "runs": self.runs,
            "failures": self.failures,
            "skipped": self.skipped,
        }
