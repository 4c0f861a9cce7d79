"""The Redis rate-limit store: GCRA in one Lua script on Redis server time.

See `taskflow.stores.ratelimit`. The script keeps the limit's theoretical arrival time, in
microseconds, at its key (`taskflow.stores.keys.rate_limit`); the key expires once that time has
passed, when it means nothing any more.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskflow.stores.redis import store_call

if TYPE_CHECKING:
    from taskflow.stores.connect import RedisClient

__all__ = ["GCRA_SCRIPT", "RedisRateLimitStore"]

# GCRA on Redis server time. KEYS[1]: the key. ARGV[1]: the emission interval, ARGV[2]: the
# tolerance, both in microseconds. Returns 0 when the run may go (and books it), else the
# microseconds to wait. The key expires once its arrival time has passed: then it means nothing.
GCRA_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
    tat = math.max(tonumber(stored), now)
end
local allow_at = tat - tolerance
if now < allow_at then
    return math.ceil(allow_at - now)
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX',
    math.max(1, math.ceil((new_tat - now) / 1000)))
return 0
"""


class RedisRateLimitStore:
    """Shared rate limits in Redis, on the server's clock.

    Args:
        client: A `redis.asyncio.Redis` client; the store does not close it.
    """

    def __init__(self, client: RedisClient) -> None:
        self.client = client
        self._gcra = client.register_script(GCRA_SCRIPT)

    def __repr__(self) -> str:
        return f"RedisRateLimitStore({self.client!r})"

    async def acquire(self, key: str, interval: float, tolerance: float) -> float:
        """Book a run now (0.0), or the seconds to wait before asking again."""
        with store_call(f"booking a run under {key}"):
            micros = await self._gcra(
                keys=[key], args=[interval * 1_000_000, tolerance * 1_000_000]
            )
        return int(micros) / 1_000_000
