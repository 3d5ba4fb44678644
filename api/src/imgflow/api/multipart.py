"""Receiving a multipart upload without holding it in memory.

The body is parsed as it arrives: form fields are kept (small), the file part goes straight to a
temporary file, and the size limit is enforced while streaming, so an oversize upload is refused
after ``max_bytes`` and not after the whole body has been read.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from imgflow.api.problems import Problem
from imgflow.core.settings import Settings

FILE_FIELD = "file"
MAX_FIELD_BYTES = 4096
MAX_FORM_OVERHEAD = 64 * 1024  # headers and small fields around the file


@dataclass
class Upload:
    fields: dict[str, str] = field(default_factory=dict)
    path: Path | None = None
    filename: str | None = None
    size: int = 0
    sha256: str | None = None  # of the file's bytes, when asked for (idempotent creates)


def too_large(limit: int) -> Problem:
    return Problem(
        413,
        "Upload too large",
        f"The file is larger than the limit of {limit:,} bytes ({limit / 1024 / 1024:g} MiB).",
        limit=limit,
    )


class _FormReader:
    def __init__(self, upload: Upload, max_bytes: int, tmpdir: str | None, digest: bool) -> None:
        self.upload = upload
        self._hash = hashlib.sha256() if digest else None
        self.max_bytes = max_bytes
        self.tmpdir = tmpdir
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name: str | None = None
        self._value = bytearray()
        self._file: BinaryIO | None = None
        self.complete = False  # the closing boundary was read

    def on_end(self) -> None:
        self.complete = True

    def on_part_begin(self) -> None:
        self._headers, self._name, self._value = {}, None, bytearray()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def on_header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode(errors="replace")
        if self._name == FILE_FIELD:
            if self.upload.path is not None:
                raise Problem(422, "Invalid request", "Send one file per job.")
            raw_name = options.get(b"filename")
            self.upload.filename = raw_name.decode(errors="replace") if raw_name is not None else None
            fd, name = tempfile.mkstemp(prefix="imgflow-upload-", dir=self.tmpdir)
            self.upload.path = Path(name)
            self._file = os.fdopen(fd, "wb")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._file is not None:
            self.upload.size += end - start
            if self.upload.size > self.max_bytes:
                raise too_large(self.max_bytes)
            self._file.write(data[start:end])
            if self._hash is not None:
                self._hash.update(data[start:end])
        else:
            self._value += data[start:end]
            if len(self._value) > MAX_FIELD_BYTES:
                raise Problem(422, "Invalid request", f"The field {self._name!r} is too long.")

    def on_part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            if self._hash is not None:
                self.upload.sha256 = self._hash.hexdigest()
        elif self._name:
            self.upload.fields[self._name] = self._value.decode(errors="replace")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


@contextlib.asynccontextmanager
async def receive_upload(
    request: Request,
    settings: Settings,
    tmpdir: str | None = None,
    *,
    digest: bool = False,
    max_bytes: int | None = None,
) -> AsyncIterator[Upload]:
    """Parse the request's multipart body; the temporary file is removed when the block ends.

    A body that pauses longer than ``upload_idle_timeout_s``, or comes slower than
    ``upload_min_bytes_per_s``, is dropped with 408 (imgflow.api.bodylimit, for every body): a
    slow client cannot hold a connection and a temporary file for ever."""
    max_bytes = max_bytes or settings.max_upload_bytes
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise Problem(
            415,
            "Unsupported media type",
            "Send the image as multipart/form-data with a 'file' part and a 'userId' field.",
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MAX_FORM_OVERHEAD:
        raise too_large(max_bytes)

    upload = Upload()
    reader = _FormReader(upload, max_bytes, tmpdir, digest)
    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": reader.on_part_begin,
            "on_header_field": reader.on_header_field,
            "on_header_value": reader.on_header_value,
            "on_header_end": reader.on_header_end,
            "on_headers_finished": reader.on_headers_finished,
            "on_part_data": reader.on_part_data,
            "on_part_end": reader.on_part_end,
            "on_end": reader.on_end,
        },
    )
    received = 0
    try:
        async for chunk in request.stream():  # bounded in size and time by imgflow.api.bodylimit
            received += len(chunk)
            if received > max_bytes + MAX_FORM_OVERHEAD:
                raise too_large(max_bytes)
            parser.write(chunk)
        parser.finalize()
        if not reader.complete:
            raise Problem(
                400,
                "Malformed multipart body",
                "The body ended before the multipart closing boundary: the upload is incomplete.",
            )
        yield upload
    except ValueError as exc:  # python-multipart's MultipartParseError
        raise Problem(
            400, "Malformed multipart body", f"The multipart body could not be parsed: {exc}"
        ) from exc
    finally:
        reader.close()
        if upload.path is not None:
            upload.path.unlink(missing_ok=True)
