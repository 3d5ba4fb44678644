"""``Idempotency-Key`` on job creation (IETF draft-ietf-httpapi-idempotency-key-header).

Per tenant and key, one Redis record shared by every replica: ``pending`` while the first
request is being accepted (a duplicate then gets 409), then the first answer and a fingerprint of
the request (SHA-256 of the file's bytes and the form fields) for ``idempotency_ttl_s``: the same
request again gets that answer, a different one under the same key gets 422. A first request that
fails leaves nothing behind, so it can be retried with the same key.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from imgflow.api.bodylimit import upload_deadline_s
from imgflow.api.problems import Problem
from imgflow.core.settings import Settings

HEADER = "Idempotency-Key"
PATTERN = r"^[\x21-\x7e]{1,255}$"  # 1 to 255 visible ASCII characters
_VALID = re.compile(PATTERN)
# delete the record only if it is still this request's pending mark
_ABANDON = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
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


def fingerprint(file_sha256: str, fields: dict[str, str]) -> str:
    canonical = json.dumps({"file": file_sha256, "fields": fields}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


async def claim(redis: Redis, settings: Settings, tenant: str, key: str) -> Claim:
    if not _VALID.fullmatch(key):
        raise Problem(400, "Invalid Idempotency-Key", f"{HEADER} must be 1 to 255 visible ASCII characters.")
    redis_key = f"{settings.stream}:idem:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"
    mark = json.dumps({"state": "pending", "id": secrets.token_hex(8)})
    # a pending mark outlives the slowest accepted upload, then lapses if its replica died
    if await redis.set(redis_key, mark, nx=True, ex=int(upload_deadline_s(settings)) + 60):
        return Claim(redis_key, mark, None)
    raw = await redis.get(redis_key)
    record: dict[str, Any] = json.loads(raw) if raw else {"state": "pending"}
    if record["state"] != "done":
        raise Problem(
            409,
            "Request in progress",
            f"A request with this {HEADER} is still being handled; retry once it has been answered.",
            headers={"Retry-After": "1"},
        )
    return Claim(redis_key, mark, Done(record["fingerprint"], record["body"]))


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
