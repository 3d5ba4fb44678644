"""A tenant's records in MongoDB (API keys, webhook endpoints, watermarks): one document per record
whose ``_id`` is the record's id, so a lookup is the one shape every MongoDB-wire server answers
from an index; listed per tenant, oldest first.

Records a tenant may hold only so many of (``CappedRecords``: webhook endpoints, watermarks) each
hold one of their tenant's numbered places (a second collection, ``_id`` = "<tenant>/<n>", n below
the cap), taken by inserting that document, so requests racing each other cannot pass the cap (a
count then a separate insert could, and a conditional update is not atomic on every MongoDB-wire
server: the unique ``_id`` is). Records stored before places were kept hold none: each takes one
place off the top of its tenant's range instead, counted at every registration (their number only
goes down, so racing requests still cannot pass the cap)."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from pymongo import ASCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import DuplicateKeyError

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


class Owned(BaseModel):
    """A record of one tenant's."""

    tenant: str


T = TypeVar("T", bound=Owned)


class CappedRecords(TenantRecords[T]):
    def __init__(
        self,
        collection: AsyncCollection[dict[str, Any]],
        places: AsyncCollection[dict[str, Any]],
        model: type[T],
        id_field: str,
    ) -> None:
        super().__init__(collection, model, id_field)
        self._places = places

    async def register(self, record: T, cap: int) -> bool:
        """Store ``record`` unless its tenant already has ``cap``; whether it was stored."""
        place = await self._take_place(record, cap)
        if place is None:
            return False
        try:
            await self.insert(record)
        except BaseException:
            await self._places.delete_one({"_id": place})
            raise
        return True

    async def _take_place(self, record: T, cap: int) -> str | None:
        for n in range(cap - await self._placeless(record.tenant)):
            place = f"{record.tenant}/{n}"
            try:
                await self._places.insert_one({"_id": place, self._id_field: getattr(record, self._id_field)})
                return place
            except DuplicateKeyError:
                continue
        return None

    async def _placeless(self, tenant: str) -> int:
        """How many of the tenant's records hold no place (stored before places were kept)."""
        ids = [doc["_id"] async for doc in self._collection.find({"tenant": tenant}, {"_id": 1})]
        if not ids:
            return 0
        # the tenant's places are the _ids "<tenant>/<n>": a range of the _id index ("0" follows "/")
        mine = {"_id": {"$gte": f"{tenant}/", "$lt": f"{tenant}0"}, self._id_field: {"$in": ids}}
        return len(ids) - await self._places.count_documents(mine)

    async def remove(self, record: T) -> bool:
        """Delete ``record``, giving its place under the cap back; whether it was there."""
        record_id = getattr(record, self._id_field)
        if not await self.delete(record_id):
            return False
        await self._places.delete_one({self._id_field: record_id})
        return True
