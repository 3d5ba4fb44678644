"""The failures of a backing service that cannot answer now: passing, to be retried.

::

    BackendUnavailable          a backing service is unreachable or refused the request
     ├── DatabaseUnavailable    MongoDB
     ├── QueueUnavailable       the job queue (Redis)
     └── StorageUnavailable     the file storage (GridFS, a directory, S3)

``what`` names the service in words a caller can show a person; the API answers every one of them
with 503 and Retry-After, in one exception handler (imgflow.api.problems).
"""

from __future__ import annotations


class BackendUnavailable(Exception):
    """A backing service could not be reached, or refused the request: a passing failure."""

    what: str = "A backing service"

    def __init__(self, message: str = "", *, what: str | None = None) -> None:
        super().__init__(message)
        if what is not None:
            self.what = what


class DatabaseUnavailable(BackendUnavailable):
    """MongoDB did not answer."""

    what = "MongoDB"


class QueueUnavailable(BackendUnavailable):
    """The job could not be handed to Redis."""

    what = "The job queue (Redis)"


class StorageUnavailable(BackendUnavailable):
    """The storage backend could not be reached, or refused the request."""

    what = "Storage"
