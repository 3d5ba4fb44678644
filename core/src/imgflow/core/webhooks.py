"""Completion webhooks, per the Standard Webhooks specification (standardwebhooks.com).

A job may carry a ``callback_url``. When a worker finishes it, it files a delivery in a Redis
stream (``webhooks_key``); the API's sender (api/webhooks.py) POSTs
``{"type", "timestamp", "data": <the job view>}`` with the ``webhook-id``, ``webhook-timestamp``
and ``webhook-signature`` headers. Delivery is at-least-once: an entry is acknowledged only after
a 2xx or after its retry is scheduled (a sorted set, like job retries), so a sender that dies
mid-delivery leaves it to be reclaimed. Every attempt is recorded per job.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import asdict, dataclass

from redis.asyncio import Redis

from imgflow.core.settings import Settings

SENDERS = "webhook-senders"  # the consumer group of the API replicas' senders
KEEP_ATTEMPTS_S = 7 * 24 * 3600


def webhooks_key(settings: Settings) -> str:
    return f"{settings.stream}:webhooks"


def webhook_retry_key(settings: Settings) -> str:
    return f"{settings.stream}:webhooks:retry"


def undelivered_key(settings: Settings) -> str:
    """The Redis set of jobs whose webhook is not delivered or given up yet: the retention sweep
    keeps those jobs, so that a late delivery still has the job to describe."""
    return f"{settings.stream}:webhooks:undelivered"


def attempts_key(settings: Settings, job_id: str) -> str:
    return f"{settings.stream}:deliveries:{job_id}"


def message_id(job_id: str, event_type: str) -> str:
    """The same for every attempt of one event: receivers deduplicate on it."""
    return f"msg_{job_id}_{event_type}"


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` with the key of ``whsec_<base64>``."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


async def file_delivery(
    redis: Redis, settings: Settings, job_id: str, event_type: str, attempt: int = 0
) -> None:
    async with redis.pipeline(transaction=True) as pipe:
        pipe.sadd(undelivered_key(settings), job_id)
        pipe.xadd(webhooks_key(settings), {"job_id": job_id, "type": event_type, "attempt": str(attempt)})
        await pipe.execute()


async def delivery_over(redis: Redis, settings: Settings, job_id: str) -> None:
    """Delivered, or given up: the job may expire."""
    await redis.srem(undelivered_key(settings), job_id)


async def undelivered(redis: Redis, settings: Settings, job_ids: list[str]) -> set[str]:
    if not job_ids:
        return set()
    flags = await redis.smismember(undelivered_key(settings), job_ids)
    return {job_id for job_id, flag in zip(job_ids, flags, strict=True) if flag}


@dataclass(frozen=True)
class Attempt:
    at: str  # ISO time
    attempt: int
    status: int | None  # HTTP status, None when no answer
    error: str | None
    delivered: bool


async def record_attempt(redis: Redis, settings: Settings, job_id: str, attempt: Attempt) -> None:
    key = attempts_key(settings, job_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.rpush(key, json.dumps(asdict(attempt)))
        pipe.expire(key, KEEP_ATTEMPTS_S)
        await pipe.execute()


async def attempts(redis: Redis, settings: Settings, job_id: str) -> list[Attempt]:
    raw = await redis.lrange(attempts_key(settings, job_id), 0, -1)
    return [Attempt(**json.loads(item)) for item in raw]
