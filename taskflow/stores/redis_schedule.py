"""The Redis schedule store: the fleet's tick claims, no-overlap lease and run records.

`taskflow.stores.schedule` says what a schedule store answers and `taskflow.stores.keys` which keys
this one writes. `claim` is one Lua script: it writes the next tick, claims the tick and, when the
claim is won and no run holds the lease, takes the lease and marks the last run as running, all at
once, so a replica that dies between the steps cannot leave a claimed tick that nobody ran. The
four keys it touches share one hash tag. The lease's renewal and release are owner-checked
scripts, so a run whose lease ran out never touches the next run's.

Each call is one script, so one round trip: a tick costs the replica that runs it two (`claim`,
then `finish`), every other replica one, and a run one more per renewal (every third of its
lease).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from taskflow.stores import keys
from taskflow.stores.lease import REPLICA
from taskflow.stores.redis import EXTEND_SCRIPT, RELEASE_SCRIPT, as_text, millis, store_call
from taskflow.stores.schedule import LastRun, TickClaim, epoch

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from taskflow.stores.connect import RedisClient

__all__ = ["RedisScheduleStore"]


# KEYS: the tick's claim, the lease, the last-run hash, the next-tick key.
# ARGV: owner, claim TTL ms, lease ms, tick (ISO), start time (ISO), next tick (ISO), replica.
# Returns {0, claimer} (claimed elsewhere), {1, owner} (run it), {2, holder} (still running).
CLAIM_SCRIPT = """
redis.call('SET', KEYS[4], ARGV[6])
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    return {0, redis.call('GET', KEYS[1])}
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[3]) then
    local holder = redis.call('GET', KEYS[2])
    if holder ~= ARGV[1] then
        return {2, holder}
    end
    redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
end
redis.call('HSET', KEYS[3], 'tick', ARGV[4], 'time', ARGV[5], 'replica', ARGV[7],
    'outcome', 'running', 'duration', '')
return {1, ARGV[1]}
"""

# KEYS[1]: the lease. ARGV[1]: the owner. ARGV[2]: the lease in ms. 1 when renewed.
RENEW_SCRIPT = EXTEND_SCRIPT  # the idempotency store's owner-checked PEXPIRE

# KEYS: the lease, the last-run hash. ARGV: owner, '1' to release the lease, tick (ISO),
# replica, outcome, duration. Records the outcome if the last run is still this one; returns 1
# when the lease was still the owner's.
FINISH_SCRIPT = """
local kept = redis.call('GET', KEYS[1]) == ARGV[1]
if kept and ARGV[2] == '1' then
    redis.call('DEL', KEYS[1])
end
local last = redis.call('HMGET', KEYS[2], 'tick', 'replica')
if last[1] == ARGV[3] and last[2] == ARGV[4] then
    redis.call('HSET', KEYS[2], 'outcome', ARGV[5], 'duration', ARGV[6])
end
if kept then
    return 1
end
return 0
"""


class RedisScheduleStore:
    """Tick claims, leases and run records of one app's periodic tasks, in Redis.

    Args:
        client: A `redis.asyncio.Redis` client; the store does not close it.
        app_name: The app's name, in the hash tag of every key.

    Example:
        ```python
        redis = Redis.from_url("redis://localhost:6379/0")
        store = RedisScheduleStore(redis, "billing")
        last = await store.last_run("cleanup")
        # LastRun(..., outcome='ok', duration=0.8)
        upcoming = await store.next_run("cleanup")
        ```
    """

    def __init__(self, client: RedisClient, app_name: str) -> None:
        self.client = client
        self.app_name = app_name
        self.replica = REPLICA
        self._claim = client.register_script(CLAIM_SCRIPT)
        self._renew = client.register_script(RENEW_SCRIPT)
        self._finish = client.register_script(FINISH_SCRIPT)
        self._release = client.register_script(RELEASE_SCRIPT)

    def __repr__(self) -> str:
        return f"RedisScheduleStore({self.client!r}, {self.app_name!r})"

    def key(self, task: str, suffix: str) -> str:
        """The key ``taskflow:{app:task}:<suffix>`` (`taskflow.stores.keys`)."""
        return keys.schedule(self.app_name, task, suffix)

    def claim_key(self, task: str, tick: datetime) -> str:
        """The key of one tick's claim."""
        return keys.tick(self.app_name, task, epoch(tick))

    async def claim(
        self,
        task: str,
        tick: datetime,
        owner: str,
        *,
        ttl: float,
        lease: float,
        started: datetime,
        next_tick: datetime,
    ) -> tuple[TickClaim, str]:
        """Claim `tick` for `owner` for `ttl` seconds and, if it is ours, take the lease.

        A lease `owner` already holds (a catch-up run) counts as free. Returns what was found and
        who holds it: the claimer (ELSEWHERE), the lease holder (BUSY) or `owner` (RUN).
        """
        keys = [self.claim_key(task, tick), *self._keys(task, "running", "last", "next")]
        args: list[str | int] = [owner, millis(ttl), millis(lease), _iso(tick), _iso(started)]
        args += [_iso(next_tick), self.replica]
        reply = await self._call(self._claim, f"claiming {keys[0]}", keys, args)
        found, holder = int(reply[0]), as_text(reply[1] if len(reply) > 1 else None)
        return (TickClaim.ELSEWHERE, TickClaim.RUN, TickClaim.BUSY)[found], holder

    async def acquire(self, task: str, owner: str, lease: float) -> str | None:
        """Take the lease for `owner` unless a run holds it; None when taken, else the holder."""
        key = self.key(task, "running")
        with store_call(f"taking the lease {key}"):
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.set(key, owner, nx=True, px=millis(lease))
                pipe.get(key)
                taken, holder = await pipe.execute()
        return None if taken else as_text(holder)

    async def renew(self, task: str, owner: str, lease: float) -> bool:
        """Extend `owner`'s lease to `lease` seconds from now; False when it was lost."""
        key = self.key(task, "running")
        return bool(await self._call(self._renew, f"renewing {key}", [key], [owner, millis(lease)]))

    async def finish(
        self,
        task: str,
        owner: str,
        tick: datetime,
        outcome: str,
        duration: float,
        *,
        release: bool = True,
    ) -> bool:
        """Record how the run of `tick` ended and (by default) release the lease.

        Returns False when the lease was no longer `owner`'s.
        """
        keys = self._keys(task, "running", "last")
        args: list[str | int] = [owner, "1" if release else "0", _iso(tick), self.replica]
        args += [outcome, f"{duration:.3f}"]
        done = await self._call(self._finish, f"finishing {keys[0]}", keys, args)
        return bool(done)

    async def release(self, task: str, owner: str) -> bool:
        """Drop `owner`'s lease; False when it was not theirs."""
        key = self.key(task, "running")
        return bool(await self._call(self._release, f"releasing {key}", [key], [owner]))

    async def set_next(self, task: str, moment: datetime) -> None:
        """Record the next tick of `task`."""
        key = self.key(task, "next")
        with store_call(f"writing {key}"):
            await self.client.set(key, _iso(moment))

    async def claimer(self, task: str, tick: datetime) -> str | None:
        """Who claimed `tick` (an owner token), or None when nobody has (or the claim expired)."""
        key = self.claim_key(task, tick)
        with store_call(f"reading {key}"):
            value = await self.client.get(key)
        return None if value is None else as_text(value)

    async def last_run(self, task: str) -> LastRun | None:
        """The last run of `task`, or None when it never ran (or Redis forgot)."""
        key = self.key(task, "last")
        with store_call(f"reading {key}"):
            raw = await self.client.hgetall(key)
        fields = {as_text(name): as_text(value) for name, value in raw.items()}
        if "tick" not in fields:
            return None
        duration = fields.get("duration")
        return LastRun(
            tick=datetime.fromisoformat(fields["tick"]),
            time=datetime.fromisoformat(fields["time"]),
            replica=fields.get("replica", ""),
            outcome=fields.get("outcome", ""),
            duration=float(duration) if duration else None,
        )

    async def next_run(self, task: str) -> datetime | None:
        """The next tick of `task` as the replicas last computed it, or None."""
        key = self.key(task, "next")
        with store_call(f"reading {key}"):
            value = await self.client.get(key)
        return None if value is None else datetime.fromisoformat(as_text(value))

    def _keys(self, task: str, *suffixes: str) -> list[str]:
        return [self.key(task, suffix) for suffix in suffixes]

    async def _call(
        self, script: AsyncScript, doing: str, keys: list[str], args: list[str | int]
    ) -> Any:
        with store_call(doing):
            return await script(keys=keys, args=args)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat()
