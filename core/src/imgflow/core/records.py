"""A tenant's records in MongoDB (API keys, webhook endpoints, watermarks): one document per record
whose ``_id`` is the record's id, so a lookup is the one shape every MongoDB-wire server answers
from an index; listed per tenant, oldest first."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection

R = TypeVar("R", bound=BaseModel)


class TenantRecords(Generic[R]):
    def __init__(self, collection: AsyncCollection[dict[str, Any]], model: type[R], id_field: str) -> None:
        self._collection = collection
        self._model = model
        self._id_field = id_field  # the model's field stored as _id

    async def ensure_indexes(self) -> None:
        await self._collection.create_index([("tenant", ASCENDING), ("created_at", ASCENDING)], name="tenant")

    async def insert(self, record: R) -> None:
        doc = record.model_dump(mode="python", exclude={self._id_field})
        doc["_id"] = getattr(record, self._id_field)
        await self._collection.insert_one(doc)

    async def get(self, record_id: str) -> R | None:
        doc = await self._collection.find_one({"_id": record_id})
        return self._from_document(doc) if doc else None

    async def of_tenant(self, tenant: str | None, limit: int = 1000) -> list[R]:
        """A tenant's records, oldest first; every tenant's with ``None``."""
        query = {} if tenant is None else {"tenant": tenant}
        cursor = self._collection.find(query).sort("created_at", ASCENDING).limit(limit)
        return [self._from_document(doc) async for doc in cursor]

    async def delete(self, record_id: str) -> bool:
        return (await self._collection.delete_one({"_id": record_id})).deleted_count == 1

    def _from_document(self, doc: dict[str, Any]) -> R:
        data = dict(doc)
        data[self._id_field] = data.pop("_id")
        return self._model.model_validate(data)
