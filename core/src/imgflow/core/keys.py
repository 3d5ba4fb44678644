"""API keys: who may call the API, for which tenant, with which scopes and rate limits.

A key reads ``imgf_<id>_<secret>``: the id finds the stored record by ``_id`` (the one lookup
every MongoDB-wire server answers by key), the whole key is compared as a SHA-256 hash in
constant time. Only the hash is stored; the key itself is shown once, when it is created.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field
from pymongo.asynchronous.database import AsyncDatabase

from imgflow.core.jobs import utcnow
from imgflow.core.records import TenantRecords

PREFIX = "imgf_"
# imgf_ + 16 hex id + _ + 43 url-safe base64 characters (256 bits)
KEY_PATTERN = re.compile(r"^imgf_([0-9a-f]{16})_[A-Za-z0-9_-]{43}$")
TENANT_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"


class Scope(StrEnum):
    jobs_write = "jobs:write"  # create jobs
    jobs_read = "jobs:read"  # read jobs, their thumbnails, events and deliveries
    admin = "admin"  # everything, every tenant, and key management


class RateLimits(BaseModel):
    """A key's request rates and the cost of one of its jobs; None takes the service's default
    (Settings)."""

    create_per_s: float | None = Field(None, gt=0, le=100_000)
    create_burst: int | None = Field(None, ge=1, le=100_000)
    read_per_s: float | None = Field(None, gt=0, le=100_000)
    read_burst: int | None = Field(None, ge=1, le=100_000)
    # below the service's max_job_cost (checked when the key is made): the key's jobs are held to it
    max_job_cost: int | None = Field(None, ge=1)


class ApiKey(BaseModel):
    key_id: str
    tenant: str
    name: str
    scopes: list[Scope]
    limits: RateLimits = Field(default_factory=RateLimits)
    created_at: datetime = Field(default_factory=utcnow)
    key_hash: str  # hex SHA-256 of the whole key

    def matches(self, key: str) -> bool:
        return hmac.compare_digest(digest(key), self.key_hash)


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The id inside a well-formed key; None for anything else."""
    match = KEY_PATTERN.match(key)
    return match.group(1) if match else None


def new_key(
    tenant: str, name: str, scopes: list[Scope], limits: RateLimits | None = None
) -> tuple[ApiKey, str]:
    """A new key record and the key itself (to show once)."""
    key_id = secrets.token_hex(8)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    record = ApiKey(
        key_id=key_id,
        tenant=tenant,
        name=name,
        scopes=sorted(set(scopes)),
        limits=limits or RateLimits(),
        key_hash=digest(key),
    )
    return record, key


class KeyStore(TenantRecords[ApiKey]):
    """Keys in MongoDB, one document per key, ``_id`` = the key's id."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        super().__init__(db["api_keys"], ApiKey, "key_id")
