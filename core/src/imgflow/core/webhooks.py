"""Completion webhooks, per the Standard Webhooks specification (standardwebhooks.com).

Two kinds of target: a job's own ``callback_url`` (signed with its tenant's own secret,
imgflow.core.tenant_secrets), and the endpoints a tenant registered (``POST /api/webhooks``, each
with its own secret and event types). When a job that has either finishes, one "fan-out" entry is
filed in a Redis stream (``webhooks_key``, imgflow.core.jobkeys.file_finished); the API's sender
(imgflow.api.background.webhook_sender) turns it into one delivery per target and POSTs
``{"type", "timestamp", "tenant", "data": <the job view>}`` with the ``webhook-id``,
``webhook-timestamp`` and ``webhook-signature`` headers. An endpoint disabled for failing too
often is announced to its tenant's other endpoints as ``endpoint.disabled`` (``data``: the
endpoint as ``GET /api/webhooks`` lists it), filed the same way without a job. Delivery is
at-least-once: an entry is acknowledged only after a 2xx or after its retry is scheduled (a sorted
set, like job retries), so a sender that dies mid-delivery leaves it to be reclaimed. Every
attempt of a job's delivery is recorded per job. A job keeps a count of its deliveries still under
way, and is not expired while it has any.
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
FANOUT = "*"  # the target of a finished job's first entry: all of its targets
CALLBACK = "callbackUrl"  # the target that is the job's own callback URL
ENDPOINT_DISABLED = "endpoint.disabled"  # sent to a tenant's other endpoints when one is disabled

# KEYS: outstanding hash; ARGV: job id, change. Drops the job once nothing is outstanding.
_OUTSTANDING = """
local left = redis.call('HINCRBY', KEYS[1], ARGV[1], ARGV[2])
if left <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
return left
"""


def webhooks_key(settings: Settings) -> str:
    return f"{settings.stream}:webhooks"


def webhook_retry_key(settings: Settings) -> str:
    return f"{settings.stream}:webhooks:retry"


def outstanding_key(settings: Settings) -> str:
    """The Redis hash of jobs -> deliveries not yet delivered or given up: the retention sweep
    keeps those jobs, so that a late delivery still has the job to describe."""
    return f"{settings.stream}:webhooks:outstanding"


def endpoint_tenants_key(settings: Settings) -> str:
    """The Redis set of tenants that have registered endpoints: a worker files a finished job
    for webhooks only if it has a callback URL or its tenant is here."""
    return f"{settings.stream}:webhooks:tenants"


def failures_key(settings: Settings) -> str:
    """The Redis hash of endpoint id -> its attempts failed in a row (gone at its next success)."""
    return f"{settings.stream}:webhooks:failures"


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
    redis: Redis, settings: Settings, job_id: str, event_type: str, attempt: int, target: str
) -> None:
    """One more attempt of a delivery already counted as outstanding (a retry that is due)."""
    fields = {"job_id": job_id, "type": event_type, "attempt": str(attempt), "target": target}
    await redis.xadd(webhooks_key(settings), fields)  # type: ignore[arg-type]


async def file_endpoint_event(
    redis: Redis,
    settings: Settings,
    endpoint_id: str,
    event_type: str,
    attempt: int = 0,
    target: str = FANOUT,
) -> None:
    """An event about one endpoint (``endpoint.disabled``), for its tenant's other endpoints that
    subscribed to it (``target`` FANOUT: all of them; else one more attempt to that one)."""
    fields = {"endpoint_id": endpoint_id, "type": event_type, "attempt": str(attempt), "target": target}
    await redis.xadd(webhooks_key(settings), fields)  # type: ignore[arg-type]


async def outstanding(redis: Redis, settings: Settings, job_id: str, change: int) -> None:
    """``change`` deliveries more (a fan-out into its targets) or fewer (one delivered or given
    up) for the job; at none, the job may expire."""
    await redis.eval(_OUTSTANDING, 1, outstanding_key(settings), job_id, change)


async def undelivered(redis: Redis, settings: Settings, job_ids: list[str]) -> set[str]:
    if not job_ids:
        return set()
    counts = await redis.hmget(outstanding_key(settings), job_ids)
    return {job_id for job_id, count in zip(job_ids, counts, strict=True) if count and int(count) > 0}


@dataclass(frozen=True)
class Attempt:
    at: str  # ISO time
    attempt: int
    status: int | None  # HTTP status, None when no answer
    error: str | None
    delivered: bool
    target: str = CALLBACK  # the job's callbackUrl, or the id of the tenant's endpoint


async def record_attempt(redis: Redis, settings: Settings, job_id: str, attempt: Attempt) -> None:
    key = attempts_key(settings, job_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.rpush(key, json.dumps(asdict(attempt)))
        pipe.expire(key, KEEP_ATTEMPTS_S)
        await pipe.execute()


async def attempts(redis: Redis, settings: Settings, job_id: str) -> list[Attempt]:
    raw = await redis.lrange(attempts_key(settings, job_id), 0, -1)
    return [Attempt(**json.loads(item)) for item in raw]
