"""The fleet store: every running replica's status snapshot, and who was seen lately.

Each replica publishes a `Snapshot` every few seconds with a short time to live, and withdraws it
on a clean stop. A reader gets the whole fleet (`FleetStore.members`): the replicas whose snapshot
is live, and, for `SEEN_TTL` after their last snapshot, those whose snapshot expired or was
withdrawn, marked gone, so a replica that died is shown as such rather than silently dropped.

`RedisFleetStore` (`taskflow.stores.redis_fleet`) shares this across the fleet;
`MemoryFleetStore` is its in-process twin. Each method raises `taskflow.StoreError` when the
store cannot answer. Times are Unix seconds.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

import msgspec

__all__ = [
    "SEEN_TTL",
    "SNAPSHOT_TTL",
    "FleetMember",
    "FleetStore",
    "MemoryFleetStore",
    "Snapshot",
]

SNAPSHOT_TTL = 15.0
"""Seconds a snapshot lives unless published again: three missed publications."""

SEEN_TTL = 3600.0
"""Seconds a replica is still listed, as gone, after its last snapshot."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """One replica's status at one moment.

    Attributes:
        replica: Which replica: ``host:pid:tag``, unique across restarts.
        host: Its host name.
        pid: Its process id.
        instance_id: Its ``instance_id`` setting (static group membership), or None.
        version: The taskflow version it runs.
        started: When it started.
        published: When this snapshot was made.
        state: ``starting``, ``running``, ``draining`` (a stop was requested) or ``stopped``
            (withdrawn on a clean stop).
        status: Its /status body, with rates (`taskflow.telemetry.snapshot`).
    """

    replica: str
    host: str
    pid: int
    instance_id: str | None
    version: str
    started: float
    published: float
    state: str
    status: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_json(self) -> str:
        """The snapshot as the store keeps it."""
        return json.dumps(asdict(self), separators=(",", ":"))

    def identity(self) -> Snapshot:
        """The snapshot without its status: what is kept after it expires."""
        return replace(self, status={})

    @classmethod
    def from_json(cls, text: str | bytes) -> Snapshot:
        """A snapshot from `to_json`'s text.

        Raises:
            ValueError: when the text is not a snapshot: not JSON, not an object, a field
                missing or of another type (checked by msgspec against the fields' types), or
                a time no date can show.
        """
        snapshot = msgspec.json.decode(text, type=cls)  # a msgspec error is a ValueError
        for name in ("started", "published"):
            moment = getattr(snapshot, name)
            if not (math.isfinite(moment) and 0 <= moment <= _LATEST_TIME):
                raise ValueError(f"a snapshot's {name} is not a Unix time: {moment!r}")
        return snapshot


_LATEST_TIME = datetime.max.replace(tzinfo=UTC).timestamp()  # the last moment a date can show


@dataclass(frozen=True, slots=True)
class FleetMember:
    """A replica as the fleet store knows it.

    Attributes:
        snapshot: Its live snapshot; for a gone replica, its last identity and state, without
            status.
        gone: True when its snapshot expired or was withdrawn.
    """

    snapshot: Snapshot
    gone: bool

    @property
    def last_seen(self) -> float:
        """When its last snapshot was made."""
        return self.snapshot.published


@runtime_checkable
class FleetStore(Protocol):
    """Where replicas' snapshots live: `RedisFleetStore` or `MemoryFleetStore`."""

    app_name: str

    async def publish(self, snapshot: Snapshot, ttl: float = SNAPSHOT_TTL) -> None:
        """Keep `snapshot` for `ttl` seconds, and its replica as seen for `SEEN_TTL`."""
        ...

    async def withdraw(self, snapshot: Snapshot) -> None:
        """Drop the replica's snapshot on a clean stop; it is seen as `snapshot.state`."""
        ...

    async def members(self) -> list[FleetMember]:
        """Every replica seen within `SEEN_TTL`: the live ones first, then by host and pid."""
        ...


def ordered(members: list[FleetMember]) -> list[FleetMember]:
    """Live replicas first, then by host, pid and replica."""
    return sorted(members, key=_order)


def _order(member: FleetMember) -> tuple[bool, str, int, str]:
    snapshot = member.snapshot
    return (member.gone, snapshot.host, snapshot.pid, snapshot.replica)


class MemoryFleetStore:
    """The fleet store of one process: snapshots in a dict, expiring by `clock`.

    Args:
        app_name: The app's name.
        clock: Unix seconds now.
    """

    def __init__(self, app_name: str, *, clock: Callable[[], float] = time.time) -> None:
        self.app_name = app_name
        self._clock = clock
        self._live: dict[str, tuple[float, Snapshot]] = {}  # replica: (expiry, snapshot)
        self._seen: dict[str, Snapshot] = {}

    async def publish(self, snapshot: Snapshot, ttl: float = SNAPSHOT_TTL) -> None:
        """Keep `snapshot` for `ttl` seconds, and its replica as seen for `SEEN_TTL`."""
        self._live[snapshot.replica] = (self._clock() + ttl, snapshot)
        self._seen[snapshot.replica] = snapshot.identity()

    async def withdraw(self, snapshot: Snapshot) -> None:
        """Drop the replica's snapshot on a clean stop; it is seen as `snapshot.state`."""
        self._live.pop(snapshot.replica, None)
        self._seen[snapshot.replica] = snapshot.identity()

    async def members(self) -> list[FleetMember]:
        """Every replica seen within `SEEN_TTL`: the live ones first, then by host and pid."""
        now = self._clock()
        found: list[FleetMember] = []
        for replica, seen in list(self._seen.items()):
            if now - seen.published > SEEN_TTL:
                del self._seen[replica]
                continue
            expiry, live = self._live.get(replica, (0.0, None))
            if live is not None and expiry > now:
                found.append(FleetMember(live, gone=False))
            else:
                found.append(FleetMember(seen, gone=True))
        return ordered(found)
