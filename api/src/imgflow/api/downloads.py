"""Sending a stored file (a thumbnail) so that a client that reads slowly holds nothing the
server needs.

A file up to ``download_memory_bytes`` is read whole from storage and sent from memory: its
storage connection (an S3 client has a pool of 10) is free again before the first byte goes out.
A larger one is streamed in pieces that storage hands over whole (S3: a ranged GET each). Either
is sent as the client takes it and has ``download_deadline_s`` in all: a client that has not
taken it by then is cut off, and the bytes held for it are let go. While it is sent it holds one
of the process's download places (``max_concurrent_downloads``, of which ``max_downloads_per_key``
for one key), so what slow readers can hold is bounded too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import Request, Response
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from imgflow.api.slots import Slots
from imgflow.core.settings import Settings
from imgflow.core.storage import CHUNK, Storage, StoredFile

log = logging.getLogger("imgflow.api")


class DeadlineStreamingResponse(StreamingResponse):
    """A streamed answer that stops, its source closed, once ``deadline_s`` have passed, and
    gives back its download place when it ends."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        deadline_s: float,
        place: contextlib.ExitStack,
        *,
        media_type: str,
        headers: dict[str, str],
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self.deadline_s, self.place = deadline_s, place

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with self.place:
                async with asyncio.timeout(self.deadline_s):
                    await super().__call__(scope, receive, send)
        except TimeoutError:
            # the answer is incomplete: the server closes the connection
            log.info(
                "cut off %s after %g s (IMGFLOW_DOWNLOAD_DEADLINE_S)", scope.get("path"), self.deadline_s
            )


async def send_stored(
    request: Request,
    storage: Storage,
    stored: StoredFile,
    headers: dict[str, str],
    settings: Settings,
    places: Slots,
    key_id: str | None,
) -> Response:
    """The file's bytes as the answer, with ``headers`` and what describes the bytes (ETag,
    Last-Modified), or 304 when the request's If-None-Match names its ETag; raises the download
    places' refusal, NotFound or StorageUnavailable before any is sent."""
    headers = {
        **headers,
        "ETag": stored.etag,
        "Last-Modified": stored.modified.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        # The bytes are what the worker encoded; a browser must not guess another type.
        "X-Content-Type-Options": "nosniff",
    }
    if stored.etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    with contextlib.ExitStack() as place:
        place.enter_context(places.take(key_id))  # from before the file is read into memory
        if stored.size <= settings.download_memory_bytes:
            data = await storage.read(stored.key)
            content, size = _slices(data), len(data)
        else:
            content, size = storage.stream(stored.key), stored.size
        return DeadlineStreamingResponse(
            content,
            settings.download_deadline_s,
            place.pop_all(),  # the answer holds the place until it ends
            media_type=stored.content_type,
            headers={**headers, "Content-Length": str(size)},
        )


async def _slices(data: bytes) -> AsyncIterator[bytes]:
    # handed to the server a slice at a time, it waits for the client between slices (a whole
    # body would be queued at once, and stay queued for as long as the client does not read)
    for start in range(0, len(data), CHUNK):
        yield data[start : start + CHUNK]
