"""The Redis idempotency store: one key per message, shared by every replica.

A key holds its owner's token while claimed (with the lease as its expiry) and ``done:<owner>``
once completed (with the retention as its expiry). `claim` is ``SET key owner NX PX lease`` and a
``GET`` in one MULTI, so it is one round trip and tells a done mark from a live claim atomically.
`complete`, `release` and `extend` are one Lua script each that first checks the key still holds
the caller's token, so a worker whose lease ran out never overwrites the next owner's claim.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from redis.exceptions import RedisError

from taskflow.exceptions import StoreError
from taskflow.stores.base import Outcome

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.commands.core import AsyncScript

__all__ = ["DONE_PREFIX", "RedisIdempotencyStore"]

DONE_PREFIX = "done:"
"""A completed key's value is this prefix and the token of the owner that completed it."""

# KEYS[1]: the key. ARGV[1]: the owner. ARGV[2]: the retention in ms. 1 when completed.
COMPLETE_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call('SET', KEYS[1], 'done:' .. ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS[1]: the key. ARGV[1]: the owner. 1 when released.
RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS[1]: the key. ARGV[1]: the owner. ARGV[2]: the new lease in ms. 1 when extended.
EXTEND_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
    return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


def _ms(seconds: float) -> int:
    """Whole milliseconds for PX and PEXPIRE, at least 1."""
    return max(1, math.ceil(round(seconds * 1000, 3)))  # round: 0.6 s is 600 ms, not 601


class RedisIdempotencyStore:
    """Claims and done marks in Redis, shared by every replica that uses the same server.

    Args:
        client: A `redis.asyncio.Redis` client; the store does not close it.

    Example:
        ```python
        from redis.asyncio import Redis

        store = RedisIdempotencyStore(Redis.from_url("redis://localhost:6379/0"))
        app = App("billing", idempotency_store=store)
        ```
    """

    def __init__(self, client: Redis) -> None:
        self.client = client
        self._complete = client.register_script(COMPLETE_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)
        self._extend = client.register_script(EXTEND_SCRIPT)

    def __repr__(self) -> str:
        return f"RedisIdempotencyStore({self.client!r})"

    async def claim(self, key: str, owner: str, lease: float) -> Outcome:
        """Claim `key` for `owner` for `lease` seconds, unless it is done or claimed by another.

        A key already claimed by `owner` itself counts as claimed (and its lease is renewed).
        """
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(key, owner, nx=True, px=_ms(lease))
                pipe.get(key)
                claimed, value = await pipe.execute()
        except RedisError as exc:
            raise StoreError(f"claiming {key} failed: {exc}") from exc
        if claimed:
            return Outcome.CLAIMED
        text = _text(value)
        if text.startswith(DONE_PREFIX):
            return Outcome.DONE
        if text == owner:
            # Our own earlier claim, which timed out on the way back yet landed: it is still ours.
            if not await self.extend(key, owner, lease):
                return Outcome.IN_PROGRESS
            return Outcome.CLAIMED
        return Outcome.IN_PROGRESS

    async def complete(self, key: str, owner: str, retention: float) -> bool:
        """Mark `owner`'s claim done for `retention` seconds; False when the claim was lost."""
        return await self._run(self._complete, "completing", key, owner, _ms(retention))

    async def release(self, key: str, owner: str) -> bool:
        """Drop `owner`'s claim so `key` can be claimed again; False when it was not theirs."""
        return await self._run(self._release, "releasing", key, owner)

    async def extend(self, key: str, owner: str, lease: float) -> bool:
        """Renew `owner`'s claim for `lease` seconds from now; False when the claim was lost."""
        return await self._run(self._extend, "extending", key, owner, _ms(lease))

    async def remaining(self, key: str) -> float:
        """Seconds left before `key`'s claim or done mark expires; 0.0 when there is none."""
        try:
            millis = await self.client.pttl(key)
        except RedisError as exc:
            raise StoreError(f"reading the lease of {key} failed: {exc}") from exc
        return max(0, int(millis)) / 1000

    async def _run(self, script: AsyncScript, doing: str, key: str, *args: str | int) -> bool:
        try:
            result = await script(keys=[key], args=list(args))
        except RedisError as exc:
            raise StoreError(f"{doing} {key} failed: {exc}") from exc
        return bool(result)


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
