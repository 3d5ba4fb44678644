"""A tenant's webhook endpoints: where its jobs' completion events go, besides a job's callbackUrl.

Stored in MongoDB, one document per endpoint (``_id`` = its id). The signing secret is kept as is:
signing needs it (HMAC), and it is shown to the tenant only once, when the endpoint is created.

A tenant's endpoints are capped (imgflow.core.records.CappedRecords: its places are
``webhook_endpoint_places``). An endpoint that fails too many attempts in
a row is disabled (``disabled_at``, ``disabled_reason``): nothing more is sent to it.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime
from typing import Any

from pydantic import Field
from pymongo.asynchronous.database import AsyncDatabase

from imgflow.core.jobs import utcnow
from imgflow.core.records import CappedRecords, Owned


def new_secret() -> str:
    """A Standard Webhooks signing secret: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Endpoint(Owned):
    endpoint_id: str = Field(default_factory=lambda: "we_" + secrets.token_hex(8))
    url: str
    events: list[str]
    secret: str = Field(default_factory=new_secret)
    created_at: datetime = Field(default_factory=utcnow)
    disabled_at: datetime | None = None
    disabled_reason: str | None = None


class EndpointStore(CappedRecords[Endpoint]):
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        super().__init__(db["webhook_endpoints"], db["webhook_endpoint_places"], Endpoint, "endpoint_id")

    async def disable(self, endpoint_id: str, reason: str) -> bool:
        """Send nothing more to the endpoint; whether this call disabled it (not already so)."""
        result = await self._collection.update_one(
            {"_id": endpoint_id, "disabled_at": None},
            {"$set": {"disabled_at": utcnow(), "disabled_reason": reason}},
        )
        return result.modified_count == 1
