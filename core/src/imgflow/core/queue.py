"""The queue contract: the message on the Redis stream, how it is published, and how deep the queue is.

The message carries only the job id and a version; MongoDB holds the job itself, so a message can
be repeated or replayed without harm (status changes there are conditional).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from faststream.redis import RedisBroker
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from imgflow.core.settings import Settings


class JobMessage(BaseModel):
    """Version 1 of the stream message. A new field means a new version; workers read both."""

    v: Literal[1] = 1
    job_id: str


class QueueUnavailable(Exception):
    """The job could not be handed to Redis."""


def make_broker(settings: Settings, **kwargs: Any) -> RedisBroker:
    # A short socket timeout lets a submit fail fast (503) instead of hanging when Redis is gone.
    return RedisBroker(settings.redis_url, socket_timeout=5.0, socket_connect_timeout=3.0, **kwargs)


async def publish_job(broker: RedisBroker, settings: Settings, job_id: str) -> None:
    try:
        await broker.publish(
            JobMessage(job_id=job_id),
            stream=settings.stream,
            maxlen=settings.stream_maxlen,
        )
    except Exception as exc:  # redis-py raises several unrelated types for "no Redis"
        raise QueueUnavailable(str(exc) or type(exc).__name__) from exc


async def ensure_group(redis: Redis, settings: Settings) -> None:
    """Create the workers' consumer group at the start of the stream if it is missing.

    FastStream would create it at ``$`` (only messages published after that moment), which hides
    every job accepted before the first worker started or since Redis lost its data.
    """
    try:
        await redis.xgroup_create(settings.stream, settings.consumer_group, id="0", mkstream=True)
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
