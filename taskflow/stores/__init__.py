"""Stores: every question about state shared across replicas, each a protocol with a Redis
implementation and an in-process twin that answers the same way.

- `IdempotencyStore`: claims with an owner and a lease, and done marks
  (`RedisIdempotencyStore`, `MemoryIdempotencyStore`).
- `ScheduleStore`: tick claims, the no-overlap lease, last and next runs
  (`RedisScheduleStore`, `MemoryScheduleStore`).
- `RateLimitStore`: shared limits as GCRA (`RedisRateLimitStore`, `MemoryRateLimitStore`).
- `FleetStore`: each replica's status snapshot, for the dashboard (`RedisFleetStore`,
  `MemoryFleetStore`).

`taskflow.stores.keys` names every Redis key, `taskflow.stores.lease` holds leases and
`taskflow.stores.connect` opens the stores of a run. Only this package imports redis, and only when
a Redis store is used: the Redis classes below load on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from taskflow.stores.base import ClaimOutcome, IdempotencyStore, TransactionalStore
from taskflow.stores.fleet import FleetMember, FleetStore, MemoryFleetStore, Snapshot
from taskflow.stores.memory import MemoryIdempotencyStore
from taskflow.stores.memory_schedule import MemoryScheduleStore
from taskflow.stores.ratelimit import MemoryRateLimitStore, RateLimitStore
from taskflow.stores.schedule import LastRun, ScheduleStore, TickClaim

if TYPE_CHECKING:
    from taskflow.stores.redis import RedisIdempotencyStore
    from taskflow.stores.redis_fleet import RedisFleetStore
    from taskflow.stores.redis_ratelimit import RedisRateLimitStore
    from taskflow.stores.redis_schedule import RedisScheduleStore

__all__ = [
    "ClaimOutcome",
    "FleetMember",
    "FleetStore",
    "IdempotencyStore",
    "LastRun",
    "MemoryFleetStore",
    "MemoryIdempotencyStore",
    "MemoryRateLimitStore",
    "MemoryScheduleStore",
    "RateLimitStore",
    "RedisFleetStore",
    "RedisIdempotencyStore",
    "RedisRateLimitStore",
    "RedisScheduleStore",
    "ScheduleStore",
    "Snapshot",
    "TickClaim",
    "TransactionalStore",
]

_LAZY = {
    "RedisFleetStore": "taskflow.stores.redis_fleet",
    "RedisIdempotencyStore": "taskflow.stores.redis",
    "RedisRateLimitStore": "taskflow.stores.redis_ratelimit",
    "RedisScheduleStore": "taskflow.stores.redis_schedule",
}


def __getattr__(name: str) -> Any:
    """Load a Redis store on first use, so redis is imported only by apps that use it."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
