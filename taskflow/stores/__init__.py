"""Stores: where taskflow keeps state shared by every replica (idempotency claims)."""

from __future__ import annotations

from taskflow.stores.base import IdempotencyStore, Outcome, TransactionalStore
from taskflow.stores.memory import MemoryIdempotencyStore
from taskflow.stores.redis import RedisIdempotencyStore

__all__ = [
    "IdempotencyStore",
    "MemoryIdempotencyStore",
    "Outcome",
    "RedisIdempotencyStore",
    "TransactionalStore",
]
