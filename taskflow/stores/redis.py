"""The Redis idempotency store: one key per message, shared by every replica.

A key holds its owner's token while claimed (with the lease as its expiry) and ``done:<owner>``
once completed (with the retention as its expiry). `claim_many` (and `claim`, its one-key form)
is one Lua script per hash tag: ``SET key owner NX PX lease``, and where that fails a ``GET``,
per key, so a done mark is told from a live claim atomically in one round trip. (A script, not a
MULTI: on a Redis Cluster redis-py runs each command of a MULTI in a thread and event loop of its
own, which blocks the caller's loop about half a millisecond per command.) `complete_many` is one
script per hash tag too. `complete`, `release` and `extend` are one Lua script each that first
checks the key still holds the caller's token, so a worker whose lease ran out never overwrites
the next owner's claim; `release_many` pipelines the release script.

`complete_with` writes a handler's own Redis effects together with the done mark: ``WATCH key``,
check the key still holds the owner's token, then ``MULTI``, the effects, the done mark,
``EXEC``. If the claim changed hands in between, EXEC applies nothing.

On a Redis Cluster a MULTI runs on one node, so every key of one call must share a slot. Each call
here touches keys of one tag: one message key, or the keys of one consumer group's batch (all
``{group}``). A handler's effects join that MULTI, so on a cluster each key they write must carry
its claim's hash tag (``{group}``, or ``{app:task}`` for a periodic task); `complete_with` refuses
other keys with a `ConfigurationError` before anything is sent.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from redis.exceptions import (
    CrossSlotTransactionError,
    NoScriptError,
    RedisClusterException,
    RedisError,
    WatchError,
)

from taskflow.exceptions import ConfigurationError, StoreError
from taskflow.stores.base import ClaimOutcome

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline
    from redis.commands.core import AsyncScript

    from taskflow.stores.base import Claim
    from taskflow.stores.connect import RedisClient

__all__ = ["DONE_PREFIX", "REDIS_ERRORS", "RedisIdempotencyStore", "evalsha", "store_call"]

REDIS_ERRORS = (RedisError, RedisClusterException)
"""What a Redis call raises when it fails: a cluster's own errors are not `RedisError`s."""


@contextlib.contextmanager
def store_call(doing: str) -> Iterator[None]:
    """Turn a failing Redis call into a `StoreError` that says what was being done.

    Every Redis store speaks through it, so the policies above them (`on_store_error`, the
    scheduler's lease rules) see one kind of failure, from a single server or a cluster alike.
    """
    try:
        yield
    except REDIS_ERRORS as exc:
        raise StoreError(f"{doing} failed: {exc}") from exc


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


# KEYS: the keys to claim (one hash tag). ARGV[1]: the owner. ARGV[2]: the lease in ms.
# Per key: 1 claimed, 2 done, 3 held by this owner already, 0 held by another.
CLAIM_MANY_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
    if redis.call('SET', key, ARGV[1], 'NX', 'PX', ARGV[2]) then
        out[i] = 1
    else
        local value = redis.call('GET', key)
        if value and string.sub(value, 1, 5) == 'done:' then
            out[i] = 2
        elseif value == ARGV[1] then
            out[i] = 3
        else
            out[i] = 0
        end
    end
end
return out
"""

# KEYS: the keys to complete (one hash tag). ARGV[1]: the retention in ms. ARGV[1 + i]: the
# owner of KEYS[i]. Per key: 1 completed, 0 when the claim was lost.
COMPLETE_MANY_SCRIPT = """
local out = {}
for i, key in ipairs(KEYS) do
    if redis.call('GET', key) == ARGV[i + 1] then
        redis.call('SET', key, 'done:' .. ARGV[i + 1], 'PX', ARGV[1])
        out[i] = 1
    else
        out[i] = 0
    end
end
return out
"""


def millis(seconds: float) -> int:
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

    def __init__(self, client: RedisClient) -> None:
        from redis.asyncio import Redis
        from redis.asyncio.cluster import RedisCluster

        self.client = client
        cluster = isinstance(client, RedisCluster)
        # On a cluster, handlers' effects are queued on a client that never connects.
        self._recorder = Redis() if cluster else None
        self._complete = client.register_script(COMPLETE_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)
        self._extend = client.register_script(EXTEND_SCRIPT)
        self._claim_many = client.register_script(CLAIM_MANY_SCRIPT)
        self._complete_many = client.register_script(COMPLETE_MANY_SCRIPT)
        from taskflow.stores.redis_ledger import RedisOffsetLedger

        self.ledger = RedisOffsetLedger(client, recorder=self._recorder)
        """Where messages without an explicit key are known by their offsets."""

    def __repr__(self) -> str:
        return f"RedisIdempotencyStore({self.client!r})"

    async def ping(self) -> None:
        """Check that Redis answers; the app calls this before any worker starts.

        Raises:
            StoreError: when it does not.
        """
        try:
            await self.client.ping()
        except REDIS_ERRORS as exc:
            raise StoreError(f"the idempotency store's Redis does not answer: {exc}") from exc

    async def claim(self, key: str, owner: str, lease: float) -> ClaimOutcome:
        """Claim `key` for `owner` for `lease` seconds, unless it is done or claimed by another.

        A key already claimed by `owner` itself counts as claimed (and its lease is renewed).
        """
        [outcome] = await self.claim_many([key], owner, lease)
        return outcome

    async def claim_many(self, keys: Sequence[str], owner: str, lease: float) -> list[ClaimOutcome]:
        """`claim` each of `keys` for `owner`: one script call per hash tag (one, for the keys
        of one consumer group's batch); the outcomes in key order."""
        if not keys:
            return []
        codes: dict[str, int] = {}
        what = keys[0] if len(keys) == 1 else f"{len(keys)} keys ({keys[0]}, …)"
        with store_call(f"claiming {what}"):
            for tagged in _by_tag(keys):
                replies = await self._eval(self._claim_many, tagged, [owner, millis(lease)])
                codes.update(zip(tagged, (int(code) for code in replies), strict=True))
        outcomes = [_CODES[codes[key]] for key in keys]
        own = [key for key, outcome in zip(keys, outcomes, strict=True) if outcome is _OWN]
        if own:  # rare: claimed again after the answer was lost, yet the claim landed: ours
            kept = {key for key in own if await self.extend(key, owner, lease)}
            outcomes = [
                (ClaimOutcome.CLAIMED if key in kept else ClaimOutcome.IN_PROGRESS)
                if o is _OWN
                else o
                for key, o in zip(keys, outcomes, strict=True)
            ]
        return outcomes

    async def complete_many(self, claims: Sequence[Claim], retention: float) -> list[bool]:
        """`complete` each (key, owner) claim: one script call per hash tag; False where it was
        lost."""
        if not claims:
            return []
        owners = dict(claims)
        done: dict[str, bool] = {}
        with store_call(f"completing {len(claims)} key(s)"):
            for tagged in _by_tag(list(owners)):
                args: list[str | int] = [millis(retention), *(owners[key] for key in tagged)]
                replies = await self._eval(self._complete_many, tagged, args)
                done.update(zip(tagged, (bool(r) for r in replies), strict=True))
        return [done[key] for key, _ in claims]

    async def release_many(self, claims: Sequence[Claim]) -> list[bool]:
        """`release` each (key, owner) claim, in one round trip; False where it was not theirs."""
        return await self._run_many(self._release, "releasing", claims)

    def transaction(self) -> Pipeline:
        """A fresh pipeline for a handler's effects; `complete_with` executes it.

        On a cluster it only records the commands (it never connects): `complete_with` sends
        them on the cluster's own transaction, to the node of the claim's slot.
        """
        client = self._recorder or cast("Redis", self.client)
        return client.pipeline(transaction=True)

    async def complete_with(
        self, key: str, owner: str, retention: float, effects: Pipeline
    ) -> bool:
        """Apply `effects` and mark `owner`'s claim done, atomically; False (nothing applied)
        when the claim was lost."""
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                await pipe.watch(key)
                if as_text(await pipe.get(key)) != owner:
                    return False
                pipe.multi()  # type: ignore[no-untyped-call]
                for args, options in effects.command_stack:
                    pipe.execute_command(*args, **options)
                pipe.set(key, DONE_PREFIX + owner, px=millis(retention))
                await pipe.execute()
        except WatchError:
            return False  # the key changed after the check: the lease ran out meanwhile
        except CrossSlotTransactionError:
            raise ConfigurationError(
                f"ctx.transaction on a Redis Cluster writes only keys with the hash tag of "
                f"{key}: name them '{_tag(key)}…' (nothing was written)"
            ) from None
        except REDIS_ERRORS as exc:
            raise StoreError(f"completing {key} with its effects failed: {exc}") from exc
        finally:
            await effects.reset()  # type: ignore[no-untyped-call]
        return True

    async def complete(self, key: str, owner: str, retention: float) -> bool:
        """Mark `owner`'s claim done for `retention` seconds; False when the claim was lost."""
        return await self._run(self._complete, "completing", key, owner, millis(retention))

    async def release(self, key: str, owner: str) -> bool:
        """Drop `owner`'s claim so `key` can be claimed again; False when it was not theirs."""
        return await self._run(self._release, "releasing", key, owner)

    async def extend(self, key: str, owner: str, lease: float) -> bool:
        """Renew `owner`'s claim for `lease` seconds from now; False when the claim was lost."""
        return await self._run(self._extend, "extending", key, owner, millis(lease))

    async def remaining(self, key: str) -> float:
        """Seconds left before `key`'s claim or done mark expires; 0.0 when there is none."""
        with store_call(f"reading the lease of {key}"):
            millis = await self.client.pttl(key)
        return max(0, int(millis)) / 1000

    async def _run(self, script: AsyncScript, doing: str, key: str, *args: str | int) -> bool:
        with store_call(f"{doing} {key}"):
            result = await script(keys=[key], args=list(args))
        return bool(result)

    async def _eval(self, script: AsyncScript, keys: list[str], args: list[str | int]) -> Any:
        return await evalsha(self.client, script, keys, args)

    async def _run_many(
        self, script: AsyncScript, doing: str, claims: Sequence[Claim], *args: str | int
    ) -> list[bool]:
        if not claims:
            return []
        with store_call(f"{doing} {len(claims)} key(s)"):
            try:
                return await self._evalsha_many(script, claims, args)
            except NoScriptError:  # Redis restarted, or its scripts were flushed: load it again
                await self.client.script_load(script.script)
                return await self._evalsha_many(script, claims, args)

    async def _evalsha_many(
        self, script: AsyncScript, claims: Sequence[Claim], args: tuple[str | int, ...]
    ) -> list[bool]:
        # EVALSHA queued by hand: a script object on a pipeline costs a SCRIPT EXISTS round
        # trip per batch, and this path runs once per batch of done marks.
        async with self.client.pipeline(transaction=False) as pipe:
            for key, owner in claims:
                pipe.execute_command("EVALSHA", script.sha, 1, key, owner, *args)
            results = await pipe.execute()
        return [bool(result) for result in results]


_OWN: Any = object()  # a claim found holding the claimer's own token: see `claim`
_CODES = {1: ClaimOutcome.CLAIMED, 2: ClaimOutcome.DONE, 3: _OWN, 0: ClaimOutcome.IN_PROGRESS}


async def evalsha(
    client: RedisClient, script: AsyncScript, keys: list[str], args: list[str | int]
) -> Any:
    """Call `script` by its digest, loading it first if Redis does not know it (a restart, a
    flush, a node that never ran it).

    By hand rather than calling the script object: that costs a ``SCRIPT EXISTS`` round trip
    when pipelined, and these calls run once per fetched batch.
    """
    try:
        return await client.evalsha(script.sha, len(keys), *keys, *args)
    except NoScriptError:
        await client.script_load(script.script)
        return await client.evalsha(script.sha, len(keys), *keys, *args)


def _by_tag(keys: Sequence[str]) -> list[list[str]]:
    """`keys` grouped by hash tag, in first-seen order: what one script call may touch."""
    groups: dict[str, list[str]] = {}
    for key in keys:
        groups.setdefault(_tag(key), []).append(key)
    return list(groups.values())


def _tag(key: str) -> str:
    """The hash tag of `key`, braces included (``{billing}``), or the key itself."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start : end + 1] if 0 <= start < end - 1 else key


def as_text(value: bytes | str | None) -> str:
    """A Redis reply as text: '' for none, bytes decoded as UTF-8."""
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value
