"""Stores: where taskflow keeps state shared by every replica (idempotency claims, tick claims)."""

from __future__ import annotations

from taskflow.stores.base import IdempotencyStore, Outcome, TransactionalStore
from taskflow.stores.memory import MemoryIdempotencyStore
from taskflow.stores.redis import RedisIdempotencyStore
from taskflow.stores.schedule import RedisScheduleStore

__all__ = [
    "IdempotencyStore",
    "MemoryIdempotencyStore",
    "Outcome",
    "RedisIdempotencyStore",
    "RedisScheduleStore",
    "TransactionalStore",
]
