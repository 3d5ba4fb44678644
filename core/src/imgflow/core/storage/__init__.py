"""Where originals and thumbnails live: one small interface (``base``), three backends.

GridFS (``gridfs``, the default) keeps files in the same MongoDB as the jobs, so the API and the
workers need no shared disk when they run on different machines. S3 (``s3``) keeps them in an
S3-compatible bucket, off the database. The local backend (``local``) is a directory, for
single-host runs. ``make_storage`` is the one place that picks a backend.
"""

from __future__ import annotations

from pymongo.asynchronous.database import AsyncDatabase

from imgflow.core.settings import Settings, StorageBackend
from imgflow.core.storage.base import CHUNK, NotFound, Storage, StorageUnavailable, StoredFile
from imgflow.core.storage.gridfs import GridFSStorage
from imgflow.core.storage.local import LocalStorage

__all__ = [
    "CHUNK",
    "GridFSStorage",
    "LocalStorage",
    "NotFound",
    "Storage",
    "StorageUnavailable",
    "StoredFile",
    "make_storage",
]


def make_storage(settings: Settings, db: AsyncDatabase[dict[str, object]]) -> Storage:
    """The backend ``settings`` name; close it with ``aclose()`` when done."""
    if settings.storage_backend is StorageBackend.local:
        return LocalStorage(settings.storage_dir)
    if settings.storage_backend is StorageBackend.s3:
        # aiobotocore weighs on a process's start and memory: only a process on S3 imports it
        from imgflow.core.storage.s3 import S3Storage

        return S3Storage(settings)
    return GridFSStorage(db)
