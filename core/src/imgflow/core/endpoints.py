"""A tenant's webhook endpoints: where its jobs' completion events go, besides a job's callbackUrl.

Stored in MongoDB, one document per endpoint (``_id`` = its id). The signing secret is kept as is:
signing needs it (HMAC), and it is shown to the tenant only once, when the endpoint is created.

A tenant's endpoints are capped: each endpoint holds one of its tenant's numbered places
(``webhook_endpoint_places``, ``_id`` = "<tenant>/<n>", n below the cap), taken by inserting that
document, so registrations racing each other cannot pass the cap (a count then a separate insert
could, and a conditional update is not atomic on every MongoDB-wire server: the unique ``_id``
is). An endpoint that fails too many attempts in
a row is disabled (``disabled_at``, ``disabled_reason``): nothing more is sent to it.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from imgflow.core.jobs import utcnow
from imgflow.core.records import TenantRecords


def new_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Endpoint(BaseModel):
    endpoint_id: str = Field(default_factory=lambda: "we_" + secrets.token_hex(8))
    tenant: str
    url: str
    events: list[str]
    secret: str = Field(default_factory=new_secret)
    created_at: datetime = Field(default_factory=utcnow)
    disabled_at: datetime | None = None
    disabled_reason: str | None = None


class EndpointStore(TenantRecords[Endpoint]):
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        super().__init__(db["webhook_endpoints"], Endpoint, "endpoint_id")
        self._places = db["webhook_endpoint_places"]

    async def register(self, endpoint: Endpoint, cap: int) -> bool:
        """Store ``endpoint`` unless its tenant already has ``cap``; whether it was stored."""
        place = await self._take_place(endpoint, cap)
        if place is None:
            return False
        try:
            await self.insert(endpoint)
        except BaseException:
            await self._places.delete_one({"_id": place})
            raise
        return True

    async def _take_place(self, endpoint: Endpoint, cap: int) -> str | None:
        for n in range(cap):
            place = f"{endpoint.tenant}/{n}"
            try:
                await self._places.insert_one({"_id": place, "endpoint_id": endpoint.endpoint_id})
                return place
            except DuplicateKeyError:
                continue
        return None

    async def remove(self, endpoint: Endpoint) -> bool:
        """Delete ``endpoint``, giving its place under the cap back; whether it was there."""
        if not await self.delete(endpoint.endpoint_id):
            return False
        await self._places.delete_one({"endpoint_id": endpoint.endpoint_id})
        return True

    async def disable(self, endpoint_id: str, reason: str) -> bool:
        """Send nothing more to the endpoint; whether this call disabled it (not already so)."""
        result = await self._collection.update_one(
            {"_id": endpoint_id, "disabled_at": None},
            {"$set": {"disabled_at": utcnow(), "disabled_reason": reason}},
        )
        return result.modified_count == 1
