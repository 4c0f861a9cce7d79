"""The offset ledger in Redis: per partition, one hash and one lease key, one script per call.

A partition's ledger is the hash ``taskflow:{group}:offsets:<topic>:<partition>``: the field
``base`` and one field per offset finished out of order above it. Its lease is the string
``taskflow:{group}:owner:<topic>:<partition>``, the owner's token with the lease as its expiry.
Every key of a group carries the ``{group}`` hash tag, so one script reads or writes all the
partitions of a fetched batch at once, on a single server or a Cluster alike.

`record_with` writes a handler's own Redis effects with the record's finish: ``WATCH`` the lease,
check no other owner holds it, then ``MULTI``, the effects, the finished offset and the lease,
``EXEC``. If the lease was written in between, EXEC applies nothing, and the check is made again:
the owner's own renewal is the usual writer, and then the second try lands. On a Cluster the effects
must carry the ``{group}`` hash tag, as `taskflow.stores.redis` explains.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Any, cast

from redis.exceptions import CrossSlotTransactionError, WatchError

from taskflow.exceptions import ConfigurationError, StoreError
from taskflow.message import TopicPartition
from taskflow.stores import keys
from taskflow.stores.ledger import LedgerState, Progress, Span
from taskflow.stores.redis import REDIS_ERRORS, as_text, evalsha, millis, store_call

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import Pipeline
    from redis.commands.core import AsyncScript

    from taskflow.stores.connect import RedisClient

__all__ = ["RedisOffsetLedger"]

# KEYS: per partition its hash, then its lease. ARGV[1]: the owner. ARGV[2]: the lease in ms.
# ARGV[3]: the retention in ms. Then per partition: the first and last offset to report on (-1 -1:
# none), the new base (-1: keep), a count n, and n finished offsets to record. Per partition the
# reply is {0, ms left on another owner's lease}, with nothing written, or {1, base, finished
# offsets of the span...}, after taking the lease and recording.
SYNC_SCRIPT = """
local out = {}
local a = 4
for i = 1, #KEYS, 2 do
    local first, last = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
    local base, n = tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
    local holder = redis.call('GET', KEYS[i + 1])
    if holder and holder ~= ARGV[1] then
        out[#out + 1] = {0, redis.call('PTTL', KEYS[i + 1])}
    else
        redis.call('SET', KEYS[i + 1], ARGV[1], 'PX', ARGV[2])
        local current = tonumber(redis.call('HGET', KEYS[i], 'base') or '-1')
        local others = redis.call('HLEN', KEYS[i]) - (current >= 0 and 1 or 0)
        if base > current then
            redis.call('HSET', KEYS[i], 'base', ARGV[a + 2])
            current = base
            if others > 0 then
                for _, field in ipairs(redis.call('HKEYS', KEYS[i])) do
                    local offset = tonumber(field)
                    if offset and offset < base then
                        redis.call('HDEL', KEYS[i], field)
                        others = others - 1
                    end
                end
            end
        end
        for k = a + 4, a + 3 + n do
            if tonumber(ARGV[k]) >= current then
                others = others + redis.call('HSET', KEYS[i], ARGV[k], '1')
            end
        end
        if n > 0 or base >= 0 then
            redis.call('PEXPIRE', KEYS[i], ARGV[3])
        end
        local found = {1, current}
        if first >= 0 and last >= current and others > 0 then
            for _, field in ipairs(redis.call('HKEYS', KEYS[i])) do
                local offset = tonumber(field)
                if offset and offset >= first and offset <= last and offset >= current then
                    found[#found + 1] = offset
                end
            end
        end
        out[#out + 1] = found
    end
    a = a + 4 + n
end
return out
"""

WATCH_ATTEMPTS = 5
"""Tries of `record_with` when the lease is written between its check and its EXEC: the
owner's own renewals do that, a third of a lease apart."""

# KEYS: leases. ARGV[1]: the owner. Deletes each lease the owner holds.
RELEASE_SCRIPT = """
for _, key in ipairs(KEYS) do
    if redis.call('GET', key) == ARGV[1] then
        redis.call('DEL', key)
    end
end
return 1
"""


class RedisOffsetLedger:
    """Finished offsets and partition leases in Redis; see `taskflow.stores.ledger`.

    Args:
        client: A `redis.asyncio.Redis` (or cluster) client; the ledger does not close it.
    """

    def __init__(self, client: RedisClient, recorder: Redis | None = None) -> None:
        self.client = client
        self._recorder = recorder
        self._sync_script = client.register_script(SYNC_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)

    def __repr__(self) -> str:
        return f"RedisOffsetLedger({self.client!r})"

    async def claim(
        self,
        group: str,
        spans: Mapping[TopicPartition, Span],
        owner: str,
        lease: float,
        progress: Mapping[TopicPartition, Progress] | None = None,
        retention: float = 0.0,
    ) -> dict[TopicPartition, LedgerState]:
        """Record `progress`, take each partition's lease for `owner`, and say what is finished
        in each span: one script call."""
        return await self._sync(group, spans, progress or {}, owner, lease, retention)

    async def record(
        self,
        group: str,
        progress: Mapping[TopicPartition, Progress],
        owner: str,
        lease: float,
        retention: float,
    ) -> dict[TopicPartition, bool]:
        """Add `progress` and renew the leases; False where another owner holds the partition."""
        states = await self._sync(group, {}, progress, owner, lease, retention)
        return {tp: not state.held for tp, state in states.items()}

    async def _sync(
        self,
        group: str,
        spans: Mapping[TopicPartition, Span],
        progress: Mapping[TopicPartition, Progress],
        owner: str,
        lease: float,
        retention: float,
    ) -> dict[TopicPartition, LedgerState]:
        tps = list({**spans, **progress})
        if not tps:
            return {}
        args: list[str | int] = [owner, millis(lease), millis(retention or lease)]
        for tp in tps:
            span, step = spans.get(tp, _NO_SPAN), progress.get(tp, _NO_PROGRESS)
            base = -1 if step.base is None else step.base
            args += (span.first, span.last, base, len(step.finished), *step.finished)
        with store_call(f"reading and writing the ledger of {_describe(group, tps)}"):
            replies = await self._eval(_keys(group, tps), args)
        return {tp: _state(reply) for tp, reply in zip(tps, replies, strict=True)}

    async def release(self, group: str, partitions: Collection[TopicPartition], owner: str) -> None:
        """Give up `owner`'s leases on `partitions`."""
        if not partitions:
            return
        leases = [keys.partition_owner(group, *tp) for tp in partitions]
        with store_call(f"releasing {_describe(group, partitions)}"):
            await self._eval(leases, [owner], self._release)

    def transaction(self) -> Pipeline:
        """A fresh pipeline for a handler's effects; `record_with` executes it."""
        client = self._recorder or cast("Redis", self.client)
        return client.pipeline(transaction=True)

    async def record_with(
        self,
        group: str,
        tp: TopicPartition,
        offset: int,
        owner: str,
        lease: float,
        retention: float,
        effects: Pipeline,
    ) -> bool:
        """Apply `effects` and record `offset` finished, atomically; False (nothing applied)
        when another owner holds the partition."""
        ledger, held = keys.offsets(group, *tp), keys.partition_owner(group, *tp)
        try:
            for _ in range(WATCH_ATTEMPTS):
                async with self.client.pipeline(transaction=True) as pipe:
                    await pipe.watch(held)
                    holder = as_text(await pipe.get(held))
                    if holder not in ("", owner):
                        return False
                    pipe.multi()  # type: ignore[no-untyped-call]
                    for args, options in effects.command_stack:
                        pipe.execute_command(*args, **options)
                    pipe.hset(ledger, str(offset), "1")
                    pipe.pexpire(ledger, millis(retention))
                    pipe.set(held, owner, px=millis(lease))
                    try:
                        await pipe.execute()
                    except WatchError:
                        continue  # the lease was written meanwhile (renewed, or taken): look again
                    return True
            raise StoreError(f"recording {tp}@{offset}: its lease kept changing under the write")
        except CrossSlotTransactionError:
            raise ConfigurationError(
                f"ctx.transaction on a Redis Cluster writes only keys with the hash tag of its "
                f"consumer group: name them '{{{group}}}…' (nothing was written)"
            ) from None
        except REDIS_ERRORS as exc:
            raise StoreError(f"recording {tp}@{offset} with its effects failed: {exc}") from exc
        finally:
            await effects.reset()  # type: ignore[no-untyped-call]

    async def _eval(
        self, keys: list[str], args: list[str | int], script: AsyncScript | None = None
    ) -> Any:
        return await evalsha(self.client, script or self._sync_script, keys, args)


_NO_SPAN = Span(-1, -1)
_NO_PROGRESS = Progress()


def _keys(group: str, tps: list[TopicPartition]) -> list[str]:
    """Each partition's hash, then its lease."""
    pairs = [(keys.offsets(group, *tp), keys.partition_owner(group, *tp)) for tp in tps]
    return [key for pair in pairs for key in pair]


def _state(reply: list[int]) -> LedgerState:
    if not reply[0]:
        return LedgerState(held_for=max(int(reply[1]), 1) / 1000)
    return LedgerState(base=int(reply[1]), finished=frozenset(int(o) for o in reply[2:]))


def _describe(group: str, partitions: Collection[TopicPartition]) -> str:
    shown = ", ".join(map(str, sorted(partitions)[:3]))
    more = f" and {len(partitions) - 3} more" if len(partitions) > 3 else ""
    return f"{shown}{more} of group {group}"
