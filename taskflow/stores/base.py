"""The idempotency store: claims with an owner and a lease, and done marks kept for a while.

A store answers one question per message, atomically, for every replica at once: may I run it?

- `claim` takes a free key for `owner` for `lease` seconds and answers `ClaimOutcome.CLAIMED`; a
  key already marked done answers `ClaimOutcome.DONE`; a key claimed by someone else whose lease
  still runs answers `ClaimOutcome.IN_PROGRESS`.
- `complete` turns the owner's claim into a done mark kept for `retention` seconds.
- `release` drops the owner's claim, so the message can be claimed again at once.
- `extend` renews the owner's lease while a long handler runs.

`claim_many`, `complete_many` and `release_many` do the same for many keys in one round trip:
the consumer claims a whole fetched batch at once, and writes done marks as they pile up.

The last three are owner-checked: they do nothing and return False when the key is no longer the
owner's claim (its lease ran out and someone else may have claimed it), so a worker that lost its
claim can never overwrite the new owner's. A store failure raises `StoreError`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline

__all__ = ["Claim", "ClaimOutcome", "IdempotencyStore", "TransactionalStore"]

Claim = tuple[str, str]
"""A key and the owner token that claimed it."""


class ClaimOutcome(enum.Enum):
    """What a claim found."""

    CLAIMED = "claimed"
    """The key was free and is now the caller's, for the lease."""
    DONE = "done"
    """The key was completed before: its work is finished."""
    IN_PROGRESS = "in_progress"
    """Someone else holds the key, and their lease still runs."""


@runtime_checkable
class IdempotencyStore(Protocol):
    """Where claims and done marks live: `RedisIdempotencyStore` or `MemoryIdempotencyStore`.

    Every method raises `taskflow.StoreError` when the store cannot answer. Times are seconds.
    """

    async def claim(self, key: str, owner: str, lease: float) -> ClaimOutcome:
        """Claim `key` for `owner` for `lease` seconds, unless it is done or claimed."""
        ...

    async def complete(self, key: str, owner: str, retention: float) -> bool:
        """Mark `owner`'s claim done for `retention` seconds; False when the claim was lost."""
        ...

    async def release(self, key: str, owner: str) -> bool:
        """Drop `owner`'s claim so `key` can be claimed again; False when it was not theirs."""
        ...

    async def extend(self, key: str, owner: str, lease: float) -> bool:
        """Renew `owner`'s claim for `lease` seconds from now; False when the claim was lost."""
        ...

    async def remaining(self, key: str) -> float:
        """Seconds left before `key`'s claim or done mark expires; 0.0 when there is none."""
        ...

    async def claim_many(self, keys: Sequence[str], owner: str, lease: float) -> list[ClaimOutcome]:
        """`claim` each of `keys` for `owner`, in one round trip; the outcomes in key order."""
        ...

    async def complete_many(self, claims: Sequence[Claim], retention: float) -> list[bool]:
        """`complete` each (key, owner) claim, in one round trip; False where it was lost."""
        ...

    async def release_many(self, claims: Sequence[Claim]) -> list[bool]:
        """`release` each (key, owner) claim, in one round trip; False where it was not theirs."""
        ...


@runtime_checkable
class TransactionalStore(Protocol):
    """A store that can write a handler's own effects atomically with its done mark.

    `RedisIdempotencyStore` is one: the effects are Redis commands queued on a pipeline, and the
    done mark and the effects land in one MULTI/EXEC that happens only if the claim is still the
    owner's (a WATCH on the key). A handler reaches the pipeline as `Context.transaction`.
    """

    def transaction(self) -> Pipeline:
        """A fresh pipeline to queue effects on; the store executes it, never the handler."""
        ...

    async def complete_with(
        self, key: str, owner: str, retention: float, effects: Pipeline
    ) -> bool:
        """Apply `effects` and mark `owner`'s claim done, atomically; False (nothing applied)
        when the claim was lost."""
        ...
