"""The per-tenant cap on unfinished jobs, in Redis, shared by every API replica.

A tenant's unfinished jobs are a sorted set (job id -> accept time). Accepting a job reserves a
place atomically and gives it back if the accept fails; finishing the job removes it (both in
imgflow.core.lifecycle, the only writer, through imgflow.core.jobkeys). A removal lost to a crash
or an outage would hold a place for ever, so when a tenant is at its cap its oldest places are first
checked against the job store and those whose jobs are finished or gone freed.
"""

from __future__ import annotations

from redis.asyncio import Redis

from imgflow.core.settings import Settings


class TenantFull(Exception):
    """The tenant has as many unfinished jobs as it may."""

    def __init__(self, tenant: str, cap: int) -> None:
        super().__init__(f"tenant {tenant!r} has {cap} unfinished jobs")
        self.tenant = tenant
        self.cap = cap


def unfinished_key(settings: Settings, tenant: str) -> str:
    return f"{settings.stream}:tenant:{tenant}:unfinished"


async def oldest(redis: Redis, settings: Settings, tenant: str, count: int) -> list[str]:
    found = await redis.zrange(unfinished_key(settings, tenant), 0, count - 1)
    return [j.decode() if isinstance(j, bytes) else str(j) for j in found]


async def count(redis: Redis, settings: Settings, tenant: str) -> int:
    return int(await redis.zcard(unfinished_key(settings, tenant)))
