"""A job's lease in Redis: while a worker holds it, that worker is the only one writing the job.

Status changes in MongoDB are then plain updates by ``_id``, the one filter shape every
MongoDB-wire server answers from its primary key (FerretDB on SQLite scans the whole collection for
``{_id, status: ...}``: the cost of a job grew with every job stored). The lease is what keeps a
late or duplicate message from moving a job backwards: a worker reads the job only after taking
its lease, and drops the message if the job is finished. A live worker's lease cannot be taken; a
dead worker's (no heartbeat) can, at once, by whoever reclaims its message.

Taking the lease also reads the job's cancellation mark (imgflow.core.lifecycle.cancel), in the
same script: a cancel that found the lease free is seen by whoever takes it next.
"""

from __future__ import annotations

from enum import IntEnum

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from imgflow.core.lifecycle import cancel_key
from imgflow.core.queue import lease_key, worker_key
from imgflow.core.settings import Settings

# KEYS: the lease, the job's cancellation mark; ARGV: me, the holder's heartbeat key prefix, ttl
# ms, "1" to take it from a holder that still looks alive. A Took.
_TAKE = """
local holder = redis.call('GET', KEYS[1])
if ARGV[4] ~= '1' and holder and holder ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. holder) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1 + redis.call('EXISTS', KEYS[2])
"""


class Took(IntEnum):
    held = 0  # by a live worker
    taken = 1
    cancelling = 2  # taken, and the job's cancellation was asked for


_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def lease_ttl_ms(settings: Settings) -> int:
    """Long enough to outlive any pause between heartbeats; a dead holder is recognised by its
    missing heartbeat anyway, not by this running out."""
    return settings.claim_idle_ms + 60_000


async def take(redis: Redis, settings: Settings, job_id: str, consumer: str, *, force: bool) -> Took:
    """Take the job's lease unless a live worker holds it. ``force`` for a reclaimed message: its
    holder was silent for ``claim_idle_ms`` (a live one keeps its messages fresh), so it is gone
    even if its heartbeat key has not expired yet."""
    heartbeat_prefix = worker_key(settings, "")
    key = lease_key(settings, job_id)
    took = await redis.eval(
        _TAKE,
        2,
        key,
        cancel_key(settings, job_id),
        consumer,
        heartbeat_prefix,
        lease_ttl_ms(settings),
        "1" if force else "0",
    )
    return Took(int(took))


def release(pipe: Pipeline, settings: Settings, job_id: str, consumer: str) -> None:
    """Queue on ``pipe``: give the lease up, if this worker still holds it."""
    pipe.eval(_RELEASE, 1, lease_key(settings, job_id), consumer)


async def keep(redis: Redis, settings: Settings, job_ids: set[str], consumer: str) -> None:
    """Renew the leases of the jobs this worker runs (and restore them if Redis lost its data)."""
    if not job_ids:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.set(lease_key(settings, job_id), consumer, px=lease_ttl_ms(settings))
        await pipe.execute()
