"""Where originals and thumbnails live: one small interface, three backends.

GridFS (the default) keeps files in the same MongoDB as the jobs, so the API and the workers need
no shared disk when they run on different machines. S3 (``imgflow.core.storage.s3``) keeps them in
an S3-compatible bucket, off the database. The local backend is a directory, for single-host runs.
``make_storage`` is the one place that picks a backend.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

import anyio
from gridfs import AsyncGridFSBucket
from gridfs.errors import NoFile
from pymongo.asynchronous.database import AsyncDatabase

from imgflow.core.settings import Settings, StorageBackend
from imgflow.core.store import DURABLE

CHUNK = 256 * 1024


class NotFound(Exception):
    """No file under that key."""


class StorageUnavailable(Exception):
    """The backend could not be reached, or refused the request: a passing failure, to retry."""


@dataclass(frozen=True)
class StoredFile:
    key: str
    size: int
    content_type: str
    etag: str
    modified: datetime


class Storage(Protocol):
    async def save(self, key: str, path: Path, content_type: str) -> StoredFile:
        """Store the file at ``path`` under ``key``, replacing what was there."""

    async def save_bytes(self, key: str, data: bytes, content_type: str) -> StoredFile: ...

    async def stat(self, key: str) -> StoredFile: ...

    def stream(self, key: str) -> AsyncIterator[bytes]:
        """The file's bytes in chunks; raises NotFound before the first chunk."""

    async def read(self, key: str) -> bytes: ...

    def entries(self) -> AsyncIterator[tuple[str, datetime]]:
        """Every stored key with when it was stored (for the orphan sweep)."""

    async def delete(self, key: str) -> None:
        """Remove the file; a missing file is not an error."""

    async def aclose(self) -> None:
        """Release connections the backend holds of its own (at shutdown)."""


def _etag(key: str, size: int, modified: datetime) -> str:
    digest = hashlib.sha256(f"{key}:{size}:{modified.timestamp()}".encode()).hexdigest()[:32]
    return f'"{digest}"'


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
            etag=_etag(key, grid_out.length, modified),
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

    async def aclose(self) -> None:
        pass  # the MongoDB client is the caller's


class LocalStorage:
    """Files in a directory; the content type is kept in a sidecar so serving needs no guessing."""

    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if "/" in key or key.startswith("."):
            raise NotFound(key)  # keys are flat names we made; anything else is not ours
        return self._root / key

    async def save(self, key: str, path: Path, content_type: str) -> StoredFile:
        target = self._path(key)
        tmp = target.with_name(f".{key}.partial")
        await anyio.to_thread.run_sync(_copy, path, tmp)
        return await self._publish(tmp, target, content_type)

    async def save_bytes(self, key: str, data: bytes, content_type: str) -> StoredFile:
        target = self._path(key)
        tmp = target.with_name(f".{key}.partial")
        await anyio.Path(tmp).write_bytes(data)
        return await self._publish(tmp, target, content_type)

    async def _publish(self, tmp: Path, target: Path, content_type: str) -> StoredFile:
        await anyio.Path(target.with_name(f".{target.name}.type")).write_text(content_type)
        os.replace(tmp, target)  # readers see the old file or the new one, never half of one
        return _stored(target.name, os.stat(target), content_type)  # what was written: no read back

    async def stat(self, key: str) -> StoredFile:
        path = self._path(key)
        try:
            st = path.stat()
            content_type = await anyio.Path(path.with_name(f".{key}.type")).read_text()
        except FileNotFoundError as exc:
            raise NotFound(key) from exc
        return _stored(key, st, content_type)

    async def stream(self, key: str) -> AsyncIterator[bytes]:
        try:
            f = await anyio.open_file(self._path(key), "rb")
        except FileNotFoundError as exc:
            raise NotFound(key) from exc
        async with f:
            while chunk := await f.read(CHUNK):
                yield chunk

    async def read(self, key: str) -> bytes:
        try:
            return await anyio.Path(self._path(key)).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(key) from exc

    async def delete(self, key: str) -> None:
        for path in (self._path(key), self._path(key).with_name(f".{key}.type")):
            path.unlink(missing_ok=True)

    async def entries(self) -> AsyncIterator[tuple[str, datetime]]:
        for entry in await anyio.to_thread.run_sync(lambda: list(os.scandir(self._root))):
            if not entry.name.startswith(".") and entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    yield entry.name, datetime.fromtimestamp(entry.stat().st_mtime, UTC)

    async def aclose(self) -> None:
        pass


def _stored(key: str, st: os.stat_result, content_type: str) -> StoredFile:
    modified = datetime.fromtimestamp(st.st_mtime, UTC)
    return StoredFile(key, st.st_size, content_type, _etag(key, st.st_size, modified), modified)


def _copy(src: Path, dst: Path) -> None:
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(CHUNK):
            fout.write(chunk)


def make_storage(settings: Settings, db: AsyncDatabase[dict[str, object]]) -> Storage:
    """The backend ``settings`` name; close it with ``aclose()`` when done."""
    if settings.storage_backend is StorageBackend.local:
        return LocalStorage(settings.storage_dir)
    if settings.storage_backend is StorageBackend.s3:
        from imgflow.core.storage.s3 import S3Storage  # it imports this module's types

        return S3Storage(settings)
    return GridFSStorage(db)
