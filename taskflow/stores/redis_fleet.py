"""The Redis fleet store: replicas' snapshots, each under a key that expires, and a ``seen`` hash.

`taskflow.stores.fleet` says what a fleet store answers, `taskflow.stores.keys` which keys this one
writes. Publishing is one script: it sets the snapshot with its time to live, records the replica
in ``seen`` (identity and time) and drops from it the replicas not seen for `SEEN_TTL`; the keys
share the ``{app:fleet}`` hash tag, so this works on a Redis Cluster too.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from taskflow.stores import keys
from taskflow.stores.fleet import SEEN_TTL, SNAPSHOT_TTL, FleetMember, Snapshot, ordered
from taskflow.stores.redis import as_text, millis, store_call

if TYPE_CHECKING:
    from taskflow.stores.connect import RedisClient

__all__ = ["RedisFleetStore"]

# KEYS: the snapshot, the seen hash. ARGV: the snapshot (JSON) or '' to withdraw it, its TTL in
# ms, the replica, its identity (JSON), SEEN_TTL in ms, the oldest time still seen (Unix s).
PUBLISH_SCRIPT = """
if ARGV[1] == '' then
    redis.call('DEL', KEYS[1])
else
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
local seen = redis.call('HGETALL', KEYS[2])
for i = 1, #seen, 2 do
    local ok, identity = pcall(cjson.decode, seen[i + 1])
    if not ok or tonumber(identity['published']) < tonumber(ARGV[6]) then
        redis.call('HDEL', KEYS[2], seen[i])
    end
end
return 1
"""


class RedisFleetStore:
    """Replicas' snapshots of one app, in Redis.

    Args:
        client: A `redis.asyncio.Redis` client; the store does not close it.
        app_name: The app's name, in the hash tag of every key.
    """

    def __init__(self, client: RedisClient, app_name: str) -> None:
        self.client = client
        self.app_name = app_name
        self._publish = client.register_script(PUBLISH_SCRIPT)

    def __repr__(self) -> str:
        return f"RedisFleetStore({self.client!r}, {self.app_name!r})"

    def snapshot_key(self, replica: str) -> str:
        """``taskflow:{app:fleet}:replica:<replica>``."""
        return keys.fleet(self.app_name, f"replica:{replica}")

    @property
    def seen_key(self) -> str:
        """``taskflow:{app:fleet}:seen``."""
        return keys.fleet(self.app_name, "seen")

    async def publish(self, snapshot: Snapshot, ttl: float = SNAPSHOT_TTL) -> None:
        """Keep `snapshot` for `ttl` seconds, and its replica as seen for `SEEN_TTL`."""
        await self._write(snapshot, snapshot.to_json(), ttl)

    async def withdraw(self, snapshot: Snapshot) -> None:
        """Drop the replica's snapshot on a clean stop; it is seen as `snapshot.state`."""
        await self._write(snapshot, "", SNAPSHOT_TTL)

    async def _write(self, snapshot: Snapshot, text: str, ttl: float) -> None:
        key = self.snapshot_key(snapshot.replica)
        args: list[str | int] = [text, millis(ttl), snapshot.replica]
        args += [snapshot.identity().to_json(), millis(SEEN_TTL), f"{time.time() - SEEN_TTL:.3f}"]
        with store_call(f"publishing {key}"):
            await self._publish(keys=[key, self.seen_key], args=args)

    async def members(self) -> list[FleetMember]:
        """Every replica seen within `SEEN_TTL`: the live ones first, then by host and pid."""
        with store_call(f"reading {self.seen_key}"):
            seen = await self.client.hgetall(self.seen_key)
        replicas = sorted(as_text(name) for name in seen)
        if not replicas:
            return []
        with store_call(f"reading the snapshots of {self.seen_key}"):
            async with self.client.pipeline(transaction=False) as pipe:
                for replica in replicas:
                    pipe.get(self.snapshot_key(replica))
                live = await pipe.execute()
        identities = {as_text(name): as_text(value) for name, value in seen.items()}
        oldest = time.time() - SEEN_TTL
        found: list[FleetMember] = []
        for replica, text in zip(replicas, live, strict=True):
            try:
                if text is not None:
                    found.append(FleetMember(Snapshot.from_json(text), gone=False))
                    continue
                identity = Snapshot.from_json(identities[replica])
            except (ValueError, TypeError, json.JSONDecodeError):
                continue  # not ours to read: written by another version, or by something else
            if identity.published >= oldest:
                found.append(FleetMember(identity, gone=True))
        return ordered(found)
