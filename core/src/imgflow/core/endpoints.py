"""A tenant's webhook endpoints: where its jobs' completion events go, besides a job's callbackUrl.

Stored in MongoDB, one document per endpoint (``_id`` = its id). The signing secret is kept as is:
signing needs it (HMAC), and it is shown to the tenant only once, when the endpoint is created.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from imgflow.core.jobs import utcnow


class Endpoint(BaseModel):
    endpoint_id: str = Field(default_factory=lambda: "we_" + secrets.token_hex(8))
    tenant: str
    url: str
    events: list[str]
    secret: str = Field(default_factory=lambda: "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
    created_at: datetime = Field(default_factory=utcnow)


class EndpointStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self._endpoints: AsyncCollection[dict[str, Any]] = db["webhook_endpoints"]

    async def ensure_indexes(self) -> None:
        await self._endpoints.create_index([("tenant", ASCENDING), ("created_at", ASCENDING)], name="tenant")

    async def insert(self, endpoint: Endpoint) -> None:
        doc = endpoint.model_dump(mode="python", exclude={"endpoint_id"})
        doc["_id"] = endpoint.endpoint_id
        await self._endpoints.insert_one(doc)

    async def get(self, endpoint_id: str) -> Endpoint | None:
        doc = await self._endpoints.find_one({"_id": endpoint_id})
        return _from_document(doc) if doc else None

    async def of_tenant(self, tenant: str | None, limit: int = 100) -> list[Endpoint]:
        """A tenant's endpoints, oldest first; every tenant's with ``None``."""
        query = {} if tenant is None else {"tenant": tenant}
        cursor = self._endpoints.find(query).sort("created_at", ASCENDING).limit(limit)
        return [_from_document(doc) async for doc in cursor]

    async def delete(self, endpoint_id: str) -> bool:
        return (await self._endpoints.delete_one({"_id": endpoint_id})).deleted_count == 1


def _from_document(doc: dict[str, Any]) -> Endpoint:
    data = dict(doc)
    data["endpoint_id"] = data.pop("_id")
    return Endpoint.model_validate(data)
