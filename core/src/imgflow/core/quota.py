"""The per-tenant cap on unfinished jobs, in Redis, shared by every API replica.

A tenant's unfinished jobs are a sorted set (job id -> accept time). The API reserves a place
atomically before it accepts a job and gives it back if the accept fails; the worker removes the
job once it is finished. A removal lost to a crash or an outage would hold a place for ever, so
when a tenant is at its cap the API first checks its oldest places against the job store and
frees those whose jobs are finished or gone.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from imgflow.core.settings import Settings

# KEYS[1]: the tenant's set; ARGV: job id, now, cap. 1 if the place was taken, else 0.
_RESERVE = """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""


def unfinished_key(settings: Settings, tenant: str) -> str:
    return f"{settings.stream}:tenant:{tenant}:unfinished"


async def reserve(redis: Redis, settings: Settings, tenant: str, job_id: str) -> bool:
    taken = await redis.eval(
        _RESERVE, 1, unfinished_key(settings, tenant), job_id, time.time(), settings.tenant_max_unfinished
    )
    return bool(taken)


async def release(redis: Redis, settings: Settings, tenant: str, *job_ids: str) -> None:
    if job_ids:
        await redis.zrem(unfinished_key(settings, tenant), *job_ids)


async def oldest(redis: Redis, settings: Settings, tenant: str, count: int) -> list[str]:
    found = await redis.zrange(unfinished_key(settings, tenant), 0, count - 1)
    return [j.decode() if isinstance(j, bytes) else str(j) for j in found]


async def count(redis: Redis, settings: Settings, tenant: str) -> int:
    return int(await redis.zcard(unfinished_key(settings, tenant)))
