"""One job's keys in Redis and the commands that write them: what goes with each change of a job
besides its MongoDB record. imgflow.core.lifecycle queues these on one pipeline per transition;
the worker takes, keeps and gives up the job's lease here too.

What is not about one job's life stays with its concept and reads what is written here: the
queue's contract, consumer group and backlog (imgflow.core.queue), the change feed that followers
read (imgflow.core.events), the webhook sender (imgflow.core.webhooks), the tenant's cap
(imgflow.core.quota), the snapshot's readers (imgflow.core.snapshots).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from enum import IntEnum

from faststream.redis.parser.binary import BinaryMessageFormatV1
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from imgflow.core.jobs import Job, JobStatus, Priority
from imgflow.core.queue import JobMessage, entries_key, inflight_key, inflight_ttl_s, job_of, worker_key
from imgflow.core.quota import unfinished_key
from imgflow.core.settings import Settings
from imgflow.core.webhooks import endpoint_tenants_key, outstanding_key, webhooks_key

# A job's snapshot (imgflow.core.snapshots): made to lapse before each change, set after it.
KEEP_S = 24 * 3600  # a finished job's snapshot; read after a day, a job falls back to MongoDB
# an unfinished one's: a Redis restarted from its append-only file may have lost the last second's
# writes, and with them a change's snapshot; then the one before is wrong for at most this long
KEEP_UNFINISHED_S = 30
# how long a snapshot may outlive a change whose writer died before setting the new one; a reader's
# fill from MongoDB lasts as long
STALE_S = 2


def snapshot_key(settings: Settings, job_id: str) -> str:
    return f"{settings.stream}:job:{job_id}"


def put_snapshot(pipe: Pipeline, settings: Settings, job: Job) -> None:
    """Queue on ``pipe``: the job as just written to MongoDB."""
    keep = KEEP_S if job.status.finished else KEEP_UNFINISHED_S
    pipe.set(snapshot_key(settings, job.job_id), job.model_dump_json(), ex=keep)


async def forget_snapshots(redis: Redis, settings: Settings, *job_ids: str) -> None:
    """Drop the snapshots now: readers read MongoDB (a job whose accept is undone, the origin of a
    reuse). Raises if Redis is unreachable."""
    if job_ids:
        await redis.delete(*(snapshot_key(settings, job_id) for job_id in job_ids))


def age_snapshot(pipe: Pipeline, settings: Settings, job_id: str) -> None:
    """Queue on ``pipe``, before a change: the snapshot lapses within ``STALE_S`` (never later than
    it would have). Until the new one is set, readers see the job as it was until the change, as
    MongoDB would tell them, without asking it; a writer that dies in between leaves the old one
    for at most that long. Run it before the change's write: if Redis is unreachable, the change is
    not made under a snapshot that would outlive it."""
    pipe.pexpire(snapshot_key(settings, job_id), STALE_S * 1000, lt=True)


async def age_snapshots(redis: Redis, settings: Settings, job_id: str) -> None:
    """``age_snapshot`` in a round trip of its own."""
    async with redis.pipeline(transaction=False) as pipe:
        age_snapshot(pipe, settings, job_id)
        await pipe.execute()


# A job's announcements: a short stream per job, a notification (the job in MongoDB is the truth)
KEEP_ENTRIES = 20
KEEP_SECONDS = 3600


def events_key(settings: Settings, job_id: str) -> str:
    return f"{settings.stream}:events:{job_id}"


def announce(pipe: Pipeline, settings: Settings, job_id: str, status: JobStatus) -> None:
    """Queue the change's announcement on ``pipe``: followers of the job are told."""
    key = events_key(settings, job_id)
    pipe.xadd(key, {"status": status.value}, maxlen=KEEP_ENTRIES, approximate=True)
    pipe.expire(key, KEEP_SECONDS)


# KEYS: stream, outstanding hash, tenants with endpoints; ARGV: job id, event, tenant, has callback
_FILE_FINISHED = """
if ARGV[4] == '1' or redis.call('SISMEMBER', KEYS[3], ARGV[3]) == 1 then
  redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
  redis.call('XADD', KEYS[1], '*', 'job_id', ARGV[1], 'type', ARGV[2], 'attempt', '0', 'target', '*')
  return 1
end
return 0
"""


def file_finished(
    pipe: Pipeline, settings: Settings, job_id: str, tenant: str, event_type: str, *, has_callback: bool
) -> None:
    """Queue on ``pipe`` the filing of a finished job's webhooks, if it has any target (decided in
    Redis: whether the tenant has endpoints), for the sender."""
    keys = [webhooks_key(settings), outstanding_key(settings), endpoint_tenants_key(settings)]
    pipe.eval(_FILE_FINISHED, 3, *keys, job_id, event_type, tenant, int(has_callback))


# KEYS[1]: the tenant's set; ARGV: job id, now, cap. 1 if the place was taken, else 0.
_TAKE_PLACE = """
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
return 1
"""


async def take_place(redis: Redis, settings: Settings, tenant: str, job_id: str) -> bool:
    """A place for the job among its tenant's unfinished jobs; False if they are as many as the
    cap allows."""
    key = unfinished_key(settings, tenant)
    return bool(await redis.eval(_TAKE_PLACE, 1, key, job_id, time.time(), settings.tenant_max_unfinished))


async def free_places(redis: Redis, settings: Settings, tenant: str, *job_ids: str) -> None:
    """The places of these jobs (an accept undone, finished jobs whose removal was lost)."""
    if job_ids:
        await redis.zrem(unfinished_key(settings, tenant), *job_ids)


def free_place(pipe: Pipeline, settings: Settings, tenant: str, job_id: str) -> None:
    """Queue on ``pipe``: the job, finished, holds its tenant's place no more."""
    pipe.zrem(unfinished_key(settings, tenant), job_id)


# KEYS: the stream, the entries hash; ARGV: the stream's cap, then per job its id, message,
# tenant, priority and cost (what imgflow.core.schedule reads). Adds each message and records its
# entry id in one step: no job is queued unrecorded.
_PUBLISH = """
local ids = {}
for i = 2, #ARGV, 5 do
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', '__data__', ARGV[i + 1],
    'tenant', ARGV[i + 2], 'priority', ARGV[i + 3], 'cost', ARGV[i + 4])
  redis.call('HSET', KEYS[2], ARGV[i], id)
  ids[#ids + 1] = id
end
return ids
"""


def _scheduled(job_id: str, data: bytes, job: Job | None) -> list[str | bytes | int]:
    """The publish script's arguments for one message: what the scheduler shares by."""
    if job is None:  # a message of an older publisher: shared as the default tenant's
        return [job_id, data, "default", Priority.interactive.value, 1]
    return [job_id, data, job.tenant, job.priority.value, max(1, job.cost)]


async def publish(pipe: Pipeline, settings: Settings, jobs: Sequence[Job]) -> None:
    """Queue on ``pipe`` each job's message, in the format FastStream's subscribers read, with its
    entry id recorded."""
    args: list[str | bytes | int] = []
    for job in jobs:
        data = await BinaryMessageFormatV1.encode(
            message=JobMessage(job_id=job.job_id, job=job).model_dump(mode="json"),
            reply_to=None,
            headers=None,
            correlation_id=str(uuid.uuid4()),
        )
        args += _scheduled(job.job_id, data, job)
    pipe.eval(_PUBLISH, 2, settings.stream, entries_key(settings), settings.stream_maxlen, *args)


def requeue(pipe: Pipeline, settings: Settings, job_id: str, data: bytes) -> None:
    """Queue on ``pipe`` a message taken from the stream (``data``) again at its end, its new entry
    id recorded."""
    args = _scheduled(job_id, data, job_of(data))
    pipe.eval(_PUBLISH, 2, settings.stream, entries_key(settings), settings.stream_maxlen, *args)


# Delete the job's record only if it still names this entry: a newer publish (a give-back, a
# republish) has recorded its own, which must stay.
_FORGET = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


def forget_entry(pipe: Pipeline, settings: Settings, job_id: str, entry_id: bytes | str) -> None:
    """Queue on ``pipe``: the entry was acknowledged, the job no longer has a message in the
    stream through it."""
    entry = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    pipe.eval(_FORGET, 1, entries_key(settings), job_id, entry)


# A job's lease: while a worker holds it, that worker is the only one writing the job. Status
# changes in MongoDB are then plain updates by ``_id``, the one filter shape every MongoDB-wire
# server answers from its primary key (FerretDB on SQLite scans the whole collection for
# ``{_id, status: ...}``). The lease is what keeps a late or duplicate message from moving a job
# backwards: a worker reads the job only after taking its lease, and drops the message if the job
# is finished. A live worker's lease cannot be taken; a dead worker's (no heartbeat) can, at once,
# by whoever reclaims its message. Taking it also reads the job's cancellation mark, in the same
# script, and asking for a cancellation sets the mark in the script that looks at the lease: between
# the two, one always sees the other.

# KEYS: the lease, the job's cancellation mark, the worker's in-flight set; ARGV: me, the holder's
# heartbeat key prefix, ttl ms, "1" to take it from a holder that still looks alive, the job id,
# the in-flight set's ttl in s. A Took.
_TAKE_LEASE = """
local holder = redis.call('GET', KEYS[1])
if ARGV[4] ~= '1' and holder and holder ~= ARGV[1] and redis.call('EXISTS', ARGV[2] .. holder) == 1 then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SADD', KEYS[3], ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[6])
return 1 + redis.call('EXISTS', KEYS[2])
"""
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# KEYS: the job's lease, its cancellation mark; ARGV: heartbeat key prefix, the mark's ttl in ms.
# 1: a live worker holds the job (it stops at its next step), 0: nobody does.
_ASK_CANCEL = """
redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
local holder = redis.call('GET', KEYS[1])
if holder and redis.call('EXISTS', ARGV[1] .. holder) == 1 then return 1 end
return 0
"""


class Took(IntEnum):
    held = 0  # by a live worker
    taken = 1
    cancelling = 2  # taken, and the job's cancellation was asked for


def lease_key(settings: Settings, job_id: str) -> str:
    """Who holds the job: the one worker that may write it."""
    return f"{settings.stream}:lease:{job_id}"


def cancel_key(settings: Settings, job_id: str) -> str:
    """Set when the job's cancellation is asked for; its worker stops at its next step."""
    return f"{settings.stream}:cancel:{job_id}"


def lease_ttl_ms(settings: Settings) -> int:
    """Long enough to outlive any pause between heartbeats; a dead holder is recognised by its
    missing heartbeat anyway, not by this running out."""
    return settings.claim_idle_ms + 60_000


async def take_lease(redis: Redis, settings: Settings, job_id: str, consumer: str, *, force: bool) -> Took:
    """Take the job's lease unless a live worker holds it, and list the job among the worker's in
    flight (``inflight_key``) in the same step: a worker that dies holding the lease is known to
    have held the job. ``force`` for a reclaimed message: its holder was silent for
    ``claim_idle_ms`` (a live one keeps its messages fresh), so it is gone even if its heartbeat
    key has not expired yet."""
    keys = (lease_key(settings, job_id), cancel_key(settings, job_id), inflight_key(settings, consumer))
    took = await redis.eval(
        _TAKE_LEASE,
        3,
        *keys,
        consumer,
        worker_key(settings, ""),
        lease_ttl_ms(settings),
        "1" if force else "0",
        job_id,
        inflight_ttl_s(settings),
    )
    return Took(int(took))


def release_lease(pipe: Pipeline, settings: Settings, job_id: str, consumer: str) -> None:
    """Queue on ``pipe``: give the lease up, if this worker still holds it."""
    pipe.eval(_RELEASE_LEASE, 1, lease_key(settings, job_id), consumer)


async def keep_leases(redis: Redis, settings: Settings, job_ids: set[str], consumer: str) -> None:
    """Renew the leases of the jobs this worker runs (and restore them if Redis lost its data)."""
    if not job_ids:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.set(lease_key(settings, job_id), consumer, px=lease_ttl_ms(settings))
        await pipe.execute()


async def ask_cancel(redis: Redis, settings: Settings, job_id: str) -> bool:
    """Mark the job's cancellation as asked for; whether a live worker holds the job (it stops at
    its next step)."""
    mark_ms = round(settings.retention_s * 1000)  # outlives any step of a job still unfinished
    keys = (lease_key(settings, job_id), cancel_key(settings, job_id))
    return bool(await redis.eval(_ASK_CANCEL, 2, *keys, worker_key(settings, ""), mark_ms))


async def cancel_requested(redis: Redis, settings: Settings, job_id: str) -> bool:
    """Whether the job's cancellation was asked for: its worker asks between steps."""
    return bool(await redis.exists(cancel_key(settings, job_id)))
