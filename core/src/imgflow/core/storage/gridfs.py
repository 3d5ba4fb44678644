"""Files in GridFS, in the same MongoDB as the jobs: the API and the workers need no shared disk
and no other server when they run on different machines."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio
from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile
from pymongo.asynchronous.database import AsyncDatabase

from imgflow.core.storage.base import CHUNK, NotFound, StoredFile, etag
from imgflow.core.store import DURABLE


class GridFSStorage:
    def __init__(self, db: AsyncDatabase[dict[str, object]]) -> None:
        # an original is what a 202 promises to process: stored as durably as the job (store.py)
        self._bucket = AsyncGridFSBucket(db, bucket_name="files", write_concern=DURABLE)

    async def save(self, key: str, path: Path, content_type: str) -> StoredFile:
        await self.delete(key)
        stream = self._bucket.open_upload_stream_with_id(key, key, metadata={"contentType": content_type})
        async with await anyio.open_file(path, "rb") as f:
            while chunk := await f.read(CHUNK):
                await stream.write(chunk)
        await stream.close()
        return await self.stat(key)

    async def save_bytes(self, key: str, data: bytes, content_type: str) -> StoredFile:
        await self.delete(key)
        await self._bucket.upload_from_stream_with_id(key, key, data, metadata={"contentType": content_type})
        return await self.stat(key)

    async def stat(self, key: str) -> StoredFile:
        try:
            grid_out = await self._bucket.open_download_stream(key)
        except NoFile as exc:
            raise NotFound(key) from exc
        meta = grid_out.metadata or {}
        modified = grid_out.upload_date.replace(tzinfo=UTC)
        return StoredFile(
            key=key,
            size=grid_out.length,
            content_type=str(meta.get("contentType", "application/octet-stream")),
            etag=etag(key, grid_out.length, modified),
            modified=modified,
        )

    async def stream(self, key: str) -> AsyncIterator[bytes]:
        try:
            grid_out = await self._bucket.open_download_stream(key)
        except NoFile as exc:
            raise NotFound(key) from exc
        while chunk := await grid_out.readchunk():
            yield chunk

    async def read(self, key: str) -> bytes:
        try:
            grid_out = await self._bucket.open_download_stream(key)
        except NoFile as exc:
            raise NotFound(key) from exc
        return await grid_out.read()

    async def delete(self, key: str) -> None:
        with contextlib.suppress(NoFile):
            await self._bucket.delete(key)

    async def entries(self) -> AsyncIterator[tuple[str, datetime]]:
        async for grid_out in self._bucket.find({}):
            yield str(grid_out._id), grid_out.upload_date.replace(tzinfo=UTC)

    async def presigned_url(
        self, key: str, *, expires_in: int | None = None, cache_control: str | None = None
    ) -> None:
        return None  # the bytes are in MongoDB, which clients do not reach

    async def aclose(self) -> None:
        pass  # the MongoDB client is the caller's
