"""Each tenant's own secrets. One signs its jobs' ``callbackUrl`` deliveries (``webhook_secrets``),
so that a receiver verifying with its tenant's secret cannot be sent events made up from another
tenant's jobs. The other is mixed into its signed delivery URLs (``url_secrets``,
imgflow.api.signed_urls): rotating it, with no grace, revokes every URL issued before.

Made on first use (the first delivery needing it) or by ``POST /api/webhooks/secret``, which
returns the new secret once and keeps the one it replaces valid for a grace period: deliveries are
signed with both meanwhile (Standard Webhooks takes several signatures), so receivers can switch at
their pace. Stored as is in MongoDB (``webhook_secrets``, ``_id`` = the tenant), like endpoints'
secrets: signing needs the secret itself (a hash cannot sign), and an encryption key would live
in the same API process that reads the database.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from imgflow.core.endpoints import new_secret
from imgflow.core.jobs import utcnow


class TenantSecret(BaseModel):
    secret: str
    created_at: datetime
    previous: str | None = None  # the secret this one replaced, still signed with until:
    previous_until: datetime | None = None

    def signing(self, now: datetime) -> list[str]:
        """The secrets a delivery is signed with now: this one, and the previous in its grace."""
        if self.previous and self.previous_until and now < self.previous_until:
            return [self.secret, self.previous]
        return [self.secret]


class TenantSecrets:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], collection: str = "webhook_secrets") -> None:
        self._collection = db[collection]

    async def find(self, tenant: str) -> TenantSecret | None:
        """The tenant's secret, or None: it has none yet (nothing is made)."""
        doc = await self._collection.find_one({"_id": tenant})
        return None if doc is None else TenantSecret.model_validate(doc)

    async def current(self, tenant: str) -> TenantSecret:
        """The tenant's secret, made now if it has none."""
        doc = await self._collection.find_one({"_id": tenant})
        if doc is None:
            made = TenantSecret(secret=new_secret(), created_at=utcnow())
            try:
                await self._collection.insert_one({"_id": tenant, **made.model_dump()})
                return made
            except DuplicateKeyError:  # another process made it first: theirs is the one
                doc = await self._collection.find_one({"_id": tenant})
                assert doc is not None
        return TenantSecret.model_validate(doc)

    async def rotate(self, tenant: str, grace: timedelta) -> TenantSecret:
        """A new secret for the tenant; the one it replaces is still signed with for ``grace``."""
        now = utcnow()
        old = await self._collection.find_one({"_id": tenant})
        made = TenantSecret(
            secret=new_secret(),
            created_at=now,
            previous=old["secret"] if old else None,
            previous_until=now + grace if old else None,
        )
        await self._collection.replace_one({"_id": tenant}, made.model_dump(), upsert=True)
        return made
