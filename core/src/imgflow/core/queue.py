"""The queue contract: the message on the Redis stream, how it is published, and how deep the queue is.

The message carries the job id, a version and the job as it was when published; MongoDB holds the
job itself, so a message can be repeated or replayed without harm. The copy is there for a
worker that finds no record for a message (the database lost it): the message and the stored
original are enough to restore the job. Each unfinished job's latest stream entry id is recorded in
a hash beside the stream (``entries_key``), so the reconciler can tell a job whose message is
still in the stream (waiting, or held by a worker) from one whose message is really gone.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from faststream.redis import RedisBroker
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.typing import EncodableT, FieldT

from imgflow.core.errors import QueueUnavailable as QueueUnavailable  # where callers import it
from imgflow.core.jobs import Job
from imgflow.core.settings import Settings

log = logging.getLogger(__name__)


class JobMessage(BaseModel):
    """Version 1 of the stream message. ``job`` came later: optional, and ignored by a worker that
    does not know it (pydantic drops unknown fields), so old and new workers read each other's
    messages through a rolling update. A change that an old worker would misread needs a new
    version, which workers then read both of."""

    v: Literal[1] = 1
    job_id: str
    job: Job | None = None  # the job when published (None in messages of older publishers)


def message(job: Job) -> JobMessage:
    return JobMessage(job_id=job.job_id, job=job)


def make_broker(settings: Settings, **kwargs: Any) -> RedisBroker:
    # A short socket timeout lets a submit fail fast (503) instead of hanging when Redis is gone.
    return RedisBroker(settings.redis_url, socket_timeout=5.0, socket_connect_timeout=3.0, **kwargs)


async def publish_job(broker: RedisBroker, redis: Redis, settings: Settings, job: Job) -> None:
    """Publish one job's message and record its entry id.

    A process dying between the two steps leaves a job with no recorded entry: the reconciler then
    publishes it again, and the worker drops whichever duplicate comes second.
    """
    try:
        entry = await broker.publish(message(job), stream=settings.stream, maxlen=settings.stream_maxlen)
    except Exception as exc:  # redis-py raises several unrelated types for "no Redis"
        raise QueueUnavailable(str(exc) or type(exc).__name__) from exc
    try:
        await record_entries(redis, settings, {job.job_id: entry})
    except Exception:
        # The job is queued; unrecorded, it only risks one harmless duplicate from the reconciler.
        log.warning("could not record the stream entry of job %s", job.job_id, exc_info=True)


async def publish_jobs(broker: RedisBroker, redis: Redis, settings: Settings, jobs: Sequence[Job]) -> None:
    """``publish_job`` for many jobs, in one pipeline (one round trip) plus one to record them."""
    if not jobs:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for job in jobs:
                await broker.publish(
                    message(job), stream=settings.stream, maxlen=settings.stream_maxlen, pipeline=pipe
                )
            entries: list[bytes] = await pipe.execute()
        await record_entries(redis, settings, {job.job_id: e for job, e in zip(jobs, entries, strict=True)})
    except Exception as exc:
        raise QueueUnavailable(str(exc) or type(exc).__name__) from exc


def entries_key(settings: Settings) -> str:
    """The Redis hash: job id -> id of the stream entry that last carried it (unfinished jobs only)."""
    return f"{settings.stream}:entries"


async def record_entries(redis: Redis, settings: Settings, entries: Mapping[str, bytes | str]) -> None:
    if not entries:
        return
    fields: dict[FieldT, EncodableT] = {job_id: entry for job_id, entry in entries.items()}
    try:
        await redis.hset(entries_key(settings), mapping=fields)
    except RedisConnectionError:
        # The first command on a connection Redis closed (it restarted) fails; the pool then
        # opens a fresh one. HSET is idempotent.
        await redis.hset(entries_key(settings), mapping=fields)


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


async def lost_jobs(redis: Redis, settings: Settings, job_ids: Sequence[str]) -> list[str]:
    """Which of these (unfinished) jobs have no message left in the stream: never published (the
    publisher died), Redis lost its data, or the stream was trimmed past the entry. A job whose
    entry is still there is waiting or held by a worker (a dead one's is reclaimed): not lost.
    Two round trips for the whole batch."""
    if not job_ids:
        return []
    recorded = await redis.hmget(entries_key(settings), list(job_ids))
    async with redis.pipeline(transaction=False) as pipe:
        for entry in recorded:
            if entry is not None:
                pipe.xrange(settings.stream, min=entry, max=entry, count=1)
        found = iter(await pipe.execute())
    return [
        job_id for job_id, entry in zip(job_ids, recorded, strict=True) if entry is None or not next(found)
    ]


async def ensure_group(redis: Redis, settings: Settings) -> None:
    """Create the workers' consumer group at the start of the stream if it is missing.

    FastStream would create it at ``$`` (only messages published after that moment), which hides
    every job accepted before the first worker started or since Redis lost its data.
    """
    await create_group(redis, settings.stream, settings.consumer_group)


async def create_group(redis: Redis, stream: str, group: str) -> None:
    """A consumer group reading ``stream`` from its start, unless it exists (stream made if need be)."""
    try:
        await redis.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


@dataclass(frozen=True)
class Backlog:
    """How much work the consumer group has: entries never delivered, and delivered but unacked."""

    lag: int
    pending: int

    @property
    def total(self) -> int:
        return self.lag + self.pending


async def read_backlog(redis: Redis, settings: Settings) -> Backlog:
    """Backlog of the workers' consumer group, from XINFO GROUPS (Redis 7+ reports ``lag``)."""
    for group in await _groups(redis, settings):
        if _as_str(group["name"]) == settings.consumer_group:
            lag = group.get("lag")
            if lag is None:
                # Redis cannot tell the lag after entries were deleted mid-stream; fall back to
                # counting what lies after the group's last delivered id.
                after = await redis.xrange(settings.stream, min=f"({_as_str(group['last-delivered-id'])}")
                lag = len(after or [])
            return Backlog(lag=int(lag), pending=int(group["pending"]))
    # No group yet: no worker has ever started, so everything in the stream (if any) is waiting.
    return Backlog(lag=int(await redis.xlen(settings.stream)), pending=0)


async def _groups(redis: Redis, settings: Settings) -> list[dict[str, Any]]:
    """XINFO GROUPS of the stream; none while the stream does not exist."""
    try:
        found: list[dict[str, Any]] = await redis.xinfo_groups(settings.stream)
    except ResponseError as exc:
        if "no such key" in str(exc).lower():
            return []
        raise
    return found


def _as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def worker_key(settings: Settings, consumer: str) -> str:
    """The Redis key where a live worker publishes its in-flight count (expires when it stops)."""
    return f"{settings.stream}:worker:{consumer}"


def inflight_key(settings: Settings, consumer: str) -> str:
    """The Redis set of the jobs a worker is processing now. It outlives the worker by more than a
    claim takes, so whoever takes its messages over can tell what it was doing when it died."""
    return f"{settings.stream}:inflight:{consumer}"


def inflight_ttl_s(settings: Settings) -> int:
    return settings.claim_idle_ms // 1000 + 60


@dataclass(frozen=True)
class Tidied:
    consumers_removed: int
    entries_trimmed: int


async def tidy_queue(redis: Redis, settings: Settings) -> Tidied:
    """Remove what the consumer groups no longer need: consumers of workers that are gone (nothing
    pending, no heartbeat, idle for longer than a claim takes) and every entry older than the
    oldest one some group still needs (unacknowledged, or not yet delivered)."""
    groups = await _groups(redis, settings)
    if not groups:
        return Tidied(0, 0)
    removed = 0
    for consumer in await _consumers(redis, settings):
        name = _as_str(consumer["name"])
        idle_and_empty = int(consumer["pending"]) == 0 and int(consumer["idle"]) > settings.claim_idle_ms
        if idle_and_empty and not await redis.exists(worker_key(settings, name)):
            await redis.xgroup_delconsumer(settings.stream, settings.consumer_group, name)
            removed += 1
    needed: list[str] = []
    for group in groups:
        name = _as_str(group["name"])
        pending = await redis.xpending(settings.stream, name)
        needed.append(_as_str(pending["min"]) if pending["pending"] else _as_str(group["last-delivered-id"]))
    if not needed:
        return Tidied(removed, 0)
    oldest = min(needed, key=lambda i: tuple(int(p) for p in i.split("-")))
    trimmed = await redis.xtrim(settings.stream, minid=oldest, approximate=False)
    return Tidied(removed, int(trimmed))


async def _consumers(redis: Redis, settings: Settings) -> list[dict[str, Any]]:
    try:
        found: list[dict[str, Any]] = await redis.xinfo_consumers(settings.stream, settings.consumer_group)
    except ResponseError as exc:  # no such group yet
        if "nogroup" in str(exc).lower():
            return []
        raise
    return found


def retry_key(settings: Settings) -> str:
    """The Redis sorted set of jobs waiting for a retry, scored by when it is due (epoch s)."""
    return f"{settings.stream}:retry"


def dead_letter_key(settings: Settings) -> str:
    """The Redis stream of jobs that failed after their last retry (fields: job_id, error)."""
    return f"{settings.stream}:dead"


async def schedule_retry(redis: Redis, settings: Settings, job_id: str, due: float) -> None:
    await redis.zadd(retry_key(settings), {job_id: due})


# Take the due members atomically, so that each is handled by one process only.
_TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""


async def take_due(redis: Redis, schedule: str, now: float, limit: int) -> list[str]:
    """Remove and return the members of the sorted set ``schedule`` scored at or before ``now``
    (job retries here, webhook retries in the API): each is taken by one process only."""
    due: list[bytes] = await redis.eval(_TAKE_DUE, 1, schedule, now, limit)
    return [member.decode() for member in due]


async def take_due_retries(redis: Redis, settings: Settings, now: float, limit: int = 500) -> list[str]:
    """Remove and return the jobs whose retry is due. A process dying before it publishes them
    leaves them to the reconciler (unfinished, no message, due)."""
    return await take_due(redis, retry_key(settings), now, limit)


@dataclass(frozen=True)
class DeadLetter:
    entry_id: str
    job_id: str
    error: str


async def add_dead_letter(redis: Redis, settings: Settings, job_id: str, error: str) -> None:
    await redis.xadd(dead_letter_key(settings), {"job_id": job_id, "error": error})


async def dead_letters(
    redis: Redis, settings: Settings, *, after: str | None, limit: int
) -> list[DeadLetter]:
    """Oldest first, from after the entry id ``after``."""
    found = await redis.xrange(dead_letter_key(settings), min=f"({after}" if after else "-", count=limit)
    letters = []
    for entry_id, fields in found or []:
        values = {_as_str(k): _as_str(v) for k, v in (fields or {}).items()}
        letters.append(
            DeadLetter(_as_str(entry_id or b""), values.get("job_id", ""), values.get("error", ""))
        )
    return letters


async def remove_dead_letters(redis: Redis, settings: Settings, job_id: str) -> int:
    """Remove every dead letter of ``job_id`` (a scan of the dead-letter stream, which stays small:
    operators drain it); returns how many."""
    removed = 0
    after = None
    while page := await dead_letters(redis, settings, after=after, limit=500):
        ids = [letter.entry_id for letter in page if letter.job_id == job_id]
        if ids:
            removed += int(await redis.xdel(dead_letter_key(settings), *ids))
        after = page[-1].entry_id
    return removed
