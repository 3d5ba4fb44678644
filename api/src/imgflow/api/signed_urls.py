"""Signed delivery URLs: a job's outputs at URLs a browser fetches without a key, until they expire.

A signed URL reads ``/signed/<tenant>/<job id>/<file>?expires=<unix seconds>&signature=<...>``.
The signature is an HMAC-SHA256 of the path and the expiry, under a key derived from the service's
``url_signing_key`` and the tenant's own URL secret (``url_secrets``, imgflow.core.tenant_secrets),
so:

- it is checked without a database read beyond the tenant's secret (cached ``key_cache_s``), and
  before the job is looked up: a tampered URL answers 403 whether its job exists or not;
- the service's key rotates with ``url_signing_previous_key`` (URLs it signed stay valid);
- a tenant revokes every URL it was given by rotating its secret (``POST /api/signed-urls/rotate``);
  revoking an API key does not, as the URL never named one.

Expiries are rounded up to a step (a 24th of the lifetime, at most an hour), so the job view gives
the same URL for that long and browsers and CDNs find it in their caches; never beyond the job's
own ``expiresAt``, after which the file is gone. With the s3 backend and ``s3_presign`` the signed
URL is a presigned S3 URL instead (its expiry is S3's to check; rotating the tenant's secret
cannot revoke it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from starlette.requests import Request

from imgflow.api.expiring import Expiring
from imgflow.core.jobs import Job
from imgflow.core.settings import Settings
from imgflow.core.storage import Storage
from imgflow.core.tenant_secrets import TenantSecret, TenantSecrets

SIGNED_PREFIX = "/signed"
MAX_STEP_S = 3600  # the longest an expiry is rounded up by
_NO_SECRET = "no tenant secret"  # verified against when a tenant has none, so both cost the same


@dataclass(frozen=True)
class Signed:
    """A job's outputs' signed URLs (by storage key), each valid until ``expires_at``."""

    expires_at: datetime
    urls: dict[str, str]


def signature(server_key: str, tenant_secret: str, path: str, expires: int) -> str:
    derived = hmac.new(server_key.encode(), b"imgflow-url\n" + tenant_secret.encode(), hashlib.sha256)
    mac = hmac.new(derived.digest(), f"{path}\n{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def expiry(now: float, ttl: int, job_expires: datetime | None) -> int:
    """When a URL signed now for ``ttl`` seconds expires: rounded up to a step, so URLs signed
    within one step are the same; at most the job's own expiry."""
    step = max(1, min(MAX_STEP_S, ttl // 24))
    at = math.ceil((now + ttl) / step) * step
    return at if job_expires is None else min(at, int(job_expires.timestamp()))


def output_path(tenant: str, job_id: str, key: str) -> str:
    return f"{SIGNED_PREFIX}/{tenant}/{job_id}/{key}"


def url_base(request: Request, configured: str) -> str:
    """What signed URLs start with: IMGFLOW_URL_BASE, else the scheme and host of the request."""
    return configured or str(request.base_url).rstrip("/")


def cache_control(expires: int, now: float) -> str:
    # an output's bytes never change once the job completed: caches need not ask again
    return f"public, max-age={max(0, int(expires - now))}, immutable"


class UrlSigner:
    """Signs a job's outputs and checks signed URLs, for one API process."""

    def __init__(self, settings: Settings, secrets: TenantSecrets, storage: Storage) -> None:
        self._settings, self._secrets, self._storage = settings, secrets, storage
        # a rotation reaches every replica within key_cache_s, as a revoked key does
        self._cache: Expiring[TenantSecret | None] = Expiring(secrets.find, settings.key_cache_s)

    @property
    def enabled(self) -> bool:
        return bool(self._settings.url_signing_key)

    def ttl(self, tenant: str) -> int:
        return self._settings.url_tenant_ttl_s.get(tenant, self._settings.url_ttl_s)

    async def sign(self, job: Job, base: str, ttl: int | None = None) -> Signed | None:
        """Signed URLs of the job's outputs, starting with ``base`` (scheme and host, or empty:
        paths); None if the job has no outputs or signing is off."""
        server_key = self._settings.url_signing_key
        if job.result is None or not server_key:
            return None
        now = time.time()
        expires = expiry(now, ttl or self.ttl(job.tenant), job.expires_at)
        urls: dict[str, str] = {}
        for key in job.result.keys:
            presigned = await self._storage.presigned_url(
                key, expires_in=max(1, expires - int(now)), cache_control=cache_control(expires, now)
            )
            if presigned is not None:
                urls[key] = presigned
                continue
            path = output_path(job.tenant, job.job_id, key)
            secret = await self._tenant_secret(job.tenant)
            urls[key] = (
                f"{base}{path}?expires={expires}&signature={signature(server_key, secret, path, expires)}"
            )
        return Signed(datetime.fromtimestamp(expires, UTC), urls)

    async def verify(self, tenant: str, path: str, expires: int, given: str) -> bool:
        """Whether ``given`` is the signature of ``path`` until ``expires`` for ``tenant``, under the
        current or the previous key. Every candidate is compared in constant time."""
        found = await self._cache.get(tenant)
        secret = found.secret if found is not None else _NO_SECRET
        keys = [k for k in (self._settings.url_signing_key, self._settings.url_signing_previous_key) if k]
        valid = False
        for key in keys:
            valid |= hmac.compare_digest(signature(key, secret, path, expires).encode(), given.encode())
        return valid and found is not None

    async def rotate(self, tenant: str) -> datetime:
        """A new URL secret for the tenant, with no grace: every URL signed before stops working
        (on other replicas within key_cache_s)."""
        made = await self._secrets.rotate(tenant, timedelta(0))
        self._cache.forget(tenant)
        return made.created_at

    async def _tenant_secret(self, tenant: str) -> str:
        found = await self._cache.get(tenant)
        if found is None:  # the tenant's first signed URL
            found = await self._secrets.current(tenant)
            self._cache.forget(tenant)
        return found.secret
