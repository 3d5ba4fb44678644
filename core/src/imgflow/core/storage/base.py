"""What every storage backend shares: the interface, the file's description and the two failures
a caller tells apart (the file is gone; the backend cannot answer now)."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from imgflow.core.errors import StorageUnavailable as StorageUnavailable  # where callers import it

CHUNK = 256 * 1024


class NotFound(Exception):
    """No file under that key."""


@dataclass(frozen=True)
class StoredFile:
    key: str
    size: int
    content_type: str
    etag: str
    modified: datetime


class Storage(Protocol):
    async def save(self, key: str, path: Path, content_type: str) -> StoredFile:
        """Store the file at ``path`` under ``key``, replacing what was there. The caller leaves
        ``path`` unchanged afterwards: a backend may link it in rather than copy it."""

    async def save_bytes(self, key: str, data: bytes, content_type: str) -> StoredFile: ...

    async def stat(self, key: str) -> StoredFile: ...

    def stream(self, key: str) -> AsyncIterator[bytes]:
        """The file's bytes in chunks; raises NotFound before the first chunk."""

    async def read(self, key: str) -> bytes: ...

    def entries(self) -> AsyncIterator[tuple[str, datetime]]:
        """Every stored key with when it was stored (for the orphan sweep)."""

    async def delete(self, key: str) -> None:
        """Remove the file; a missing file is not an error."""

    async def presigned_url(
        self, key: str, *, expires_in: int | None = None, cache_control: str | None = None
    ) -> str | None:
        """A URL from which a client GETs the file without the API in between, valid
        ``expires_in`` seconds (default ``s3_presign_expiry_s``) and answered with
        ``cache_control`` if given; or None: the backend cannot make one, or the settings say not
        to (``s3_presign``)."""

    async def aclose(self) -> None:
        """Release connections the backend holds of its own (at shutdown)."""


def etag(key: str, size: int, modified: datetime) -> str:
    """An ETag for a backend that keeps none: it changes whenever the file is stored again."""
    digest = hashlib.sha256(f"{key}:{size}:{modified.timestamp()}".encode()).hexdigest()[:32]
    return f'"{digest}"'
