"""``Idempotency-Key`` on job creation (IETF draft-ietf-httpapi-idempotency-key-header).

Per tenant and key, one Redis record shared by every replica: ``pending`` while the first
request is being accepted (a duplicate then gets 409), then the first answer and a fingerprint of
the request (SHA-256 of the file's bytes and the form fields) for ``idempotency_ttl_s``: the same
request again gets that answer, a different one under the same key gets 422. A first request that
fails leaves nothing behind, so it can be retried with the same key.

A replica may die after recording the job and before answering. So the pending mark names the job
id the first request will insert and a deadline after which that request inserts nothing; a retry
finding the mark past that (and a MongoDB operation's time limit) looks the job up in MongoDB:
there, it is answered as a replay of that job (its record keeps the fingerprint); not there, the
retry takes the key over. Only this rare retry costs a read.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from imgflow.api.bodylimit import upload_deadline_s
from imgflow.api.problems import Problem
from imgflow.api.schemas import Accepted
from imgflow.core.jobs import new_job_id
from imgflow.core.settings import Settings
from imgflow.core.store import JobStore

HEADER = "Idempotency-Key"
PATTERN = r"^[\x21-\x7e]{1,255}$"  # 1 to 255 visible ASCII characters
_VALID = re.compile(PATTERN)
# delete the record only if it is still this request's pending mark
_ABANDON = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# replace the record only if it is still the mark read (a retry taking over an abandoned claim)
_SWAP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
return false
"""


@dataclass(frozen=True)
class Done:
    fingerprint: str
    body: dict[str, Any]


@dataclass
class Claim:
    """This request's hold on an idempotency key: either it is the first (``done`` is None) or
    the first answer is known."""

    redis_key: str
    mark: str
    done: Done | None
    job_id: str = ""  # the id the first request gives its job
    insert_by: float = 0.0  # the first request inserts its job only before this (epoch seconds)


def fingerprint(file_sha256: str, fields: dict[str, str]) -> str:
    canonical = json.dumps({"file": file_sha256, "fields": fields}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def claim(redis: Redis, store: JobStore, settings: Settings, tenant: str, key: str) -> Claim:
    if not _VALID.fullmatch(key):
        raise Problem(400, "Invalid Idempotency-Key", f"{HEADER} must be 1 to 255 visible ASCII characters.")
    redis_key = f"{settings.stream}:idem:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"
    first = _pending(settings, redis_key)
    if await redis.set(redis_key, first.mark, nx=True, ex=int(settings.idempotency_ttl_s)):
        return first
    raw = await redis.get(redis_key)
    record: dict[str, Any] = json.loads(raw) if raw else {"state": "pending"}
    if record["state"] == "done":
        return Claim(redis_key, first.mark, Done(record["fingerprint"], record["body"]))
    # an insert begun just before the first request's deadline ends within MongoDB's time limit
    if "job" not in record or time.time() < record["deadline"] + settings.mongodb_timeout_s:
        raise Problem(
            409,
            "Request in progress",
            f"A request with this {HEADER} is still being handled; retry once it has been answered.",
            headers={"Retry-After": "1"},
        )
    assert raw is not None  # a mark naming a job was read
    job = await store.get(record["job"])
    if job is not None:  # the first request recorded its job and died before answering
        body = Accepted(job_id=job.job_id, status=job.status, created_at=job.created_at).model_dump(
            mode="json"
        )
        done = Done(job.idempotency_print or "", body)
        await remember(redis, settings, Claim(redis_key, first.mark, done), done.fingerprint, body)
        return Claim(redis_key, first.mark, done)
    if await redis.eval(_SWAP, 1, redis_key, raw, first.mark, int(settings.idempotency_ttl_s)):
        return first
    return await claim(redis, store, settings, tenant, key)  # another retry got there first


def _pending(settings: Settings, redis_key: str) -> Claim:
    """A first request's mark: the job id it will use, and a deadline for inserting it long
    enough for the slowest accepted upload and as long again for checking and storing it."""
    job_id = new_job_id()
    insert_by = time.time() + 2 * upload_deadline_s(settings)
    mark = json.dumps({"state": "pending", "job": job_id, "deadline": insert_by, "id": secrets.token_hex(8)})
    return Claim(redis_key, mark, None, job_id, insert_by)


async def remember(redis: Redis, settings: Settings, claim: Claim, print_: str, body: dict[str, Any]) -> None:
    record = json.dumps({"state": "done", "fingerprint": print_, "body": body})
    await redis.set(claim.redis_key, record, ex=int(settings.idempotency_ttl_s))


async def abandon(redis: Redis, claim: Claim) -> None:
    await redis.eval(_ABANDON, 1, claim.redis_key, claim.mark)


def replay(claim: Claim, print_: str) -> dict[str, Any]:
    """The first answer, if this request is the same as the first."""
    assert claim.done is not None
    if claim.done.fingerprint != print_:
        raise Problem(
            422,
            "Idempotency-Key reused",
            f"This {HEADER} was used for a different request (other file bytes or fields) in the "
            "last 24 hours; use a new key for a new job.",
        )
    return claim.done.body
