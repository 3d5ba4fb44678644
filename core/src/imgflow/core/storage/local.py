"""Files in a directory, for single-host runs; the content type is kept in a sidecar so serving
needs no guessing."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import anyio

from imgflow.core.storage.base import CHUNK, NotFound, StoredFile, etag


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self._root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if "/" in key or key.startswith("."):
            raise NotFound(key)  # keys are flat names we made; anything else is not ours
        return self._root / key

    async def save(self, key: str, path: Path, content_type: str) -> StoredFile:
        """Link ``path`` in (its callers, the API's uploads, leave it unchanged and remove their
        name); copied instead when it is on another filesystem. Copying a 1080p upload back was a
        visible share of the API's CPU per accepted job."""
        target = self._path(key)
        tmp = target.with_name(f".{key}.partial")
        try:
            os.link(path, tmp)
        except OSError:  # another filesystem, or a partial file left by a crash
            await anyio.to_thread.run_sync(_copy, path, tmp)
        return await self._publish(tmp, target, content_type)

    async def save_bytes(self, key: str, data: bytes, content_type: str) -> StoredFile:
        target = self._path(key)
        tmp = target.with_name(f".{key}.partial")
        await anyio.Path(tmp).write_bytes(data)
        return await self._publish(tmp, target, content_type)

    async def _publish(self, tmp: Path, target: Path, content_type: str) -> StoredFile:
        # a few bytes: written here, as the thread hop of an async write costs more than the write
        target.with_name(f".{target.name}.type").write_text(content_type)
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

    async def presigned_url(
        self, key: str, *, expires_in: int | None = None, cache_control: str | None = None
    ) -> None:
        return None  # the directory is the API's own; clients reach it only through the API

    async def aclose(self) -> None:
        pass


def _stored(key: str, st: os.stat_result, content_type: str) -> StoredFile:
    modified = datetime.fromtimestamp(st.st_mtime, UTC)
    return StoredFile(key, st.st_size, content_type, etag(key, st.st_size, modified), modified)


def _copy(src: Path, dst: Path) -> None:
    with src.open("rb") as fin, dst.open("wb") as fout:
        while chunk := fin.read(CHUNK):
            fout.write(chunk)
