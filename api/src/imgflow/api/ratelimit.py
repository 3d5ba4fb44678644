"""Per-key request rates in Redis, shared by every API replica.

One Redis key per (API key, class of request) holds the generic cell rate algorithm's
"theoretical arrival time": a request is allowed when it is at most ``burst`` intervals early. The
check and the update are one Lua script, so replicas never race; Redis' own clock is used, so
replicas' clocks need not agree. Answers carry the IETF draft's ``RateLimit-Policy`` and
``RateLimit`` headers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from redis.asyncio import Redis

# KEYS[1]: the cell; ARGV: interval (us), burst. Returns allowed (0/1), remaining, wait (us) until
# the next request would be allowed (0 if allowed), and until the bucket is full again.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - burst * interval
if now < allow_at then
  return {0, 0, allow_at - now, tat - now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now - allow_at) / interval), 0, new_tat - now}
"""


@dataclass(frozen=True)
class Policy:
    name: str  # "create" or "read"
    per_s: float
    burst: int

    @property
    def header(self) -> str:
        window = max(1, math.ceil(self.burst / self.per_s))
        return f'"{self.name}";q={self.burst};w={window}'


@dataclass(frozen=True)
class Decision:
    allowed: bool
    remaining: int
    retry_after_s: float
    reset_s: float

    def headers(self, policy: Policy) -> dict[str, str]:
        return {
            "RateLimit-Policy": policy.header,
            "RateLimit": f'"{policy.name}";r={self.remaining};t={math.ceil(self.reset_s)}',
        }


class RateLimiter:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix
        self._script = redis.register_script(_GCRA)

    async def hit(self, key_id: str, policy: Policy) -> Decision:
        interval_us = max(1, round(1_000_000 / policy.per_s))
        allowed, remaining, wait_us, reset_us = await self._script(
            keys=[f"{self._prefix}:rate:{policy.name}:{key_id}"], args=[interval_us, policy.burst]
        )
        return Decision(bool(allowed), int(remaining), int(wait_us) / 1e6, int(reset_us) / 1e6)
