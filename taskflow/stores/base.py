"""The idempotency store: claims with an owner and a lease, and done marks kept for a while.

A store answers one question per message, atomically, for every replica at once: may I run it?

- `claim` takes a free key for `owner` for `lease` seconds and answers `Outcome.CLAIMED`; a key
  already marked done answers `Outcome.DONE`; a key claimed by someone else whose lease still runs
  answers `Outcome.IN_PROGRESS`.
- `complete` turns the owner's claim into a done mark kept for `retention` seconds.
- `release` drops the owner's claim, so the message can be claimed again at once.
- `extend` renews the owner's lease while a long handler runs.

The last three are owner-checked: they do nothing and return False when the key is no longer the
owner's claim (its lease ran out and someone else may have claimed it), so a worker that lost its
claim can never overwrite the new owner's. A store failure raises `StoreError`.
"""

from __future__ import annotations

import enum
from typing import Protocol, runtime_checkable

__all__ = ["IdempotencyStore", "Outcome"]


class Outcome(enum.Enum):
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

    async def claim(self, key: str, owner: str, lease: float) -> Outcome:
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
