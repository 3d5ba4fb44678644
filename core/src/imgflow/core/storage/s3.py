"""Originals and thumbnails in an S3-compatible bucket (AWS S3, SeaweedFS, MinIO, Ceph RGW).

Files then cost MongoDB nothing, any number of API and worker replicas share them without a shared
disk, and the API can send clients to a presigned URL instead of passing the bytes through itself.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, cast

import anyio
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError

from imgflow.core.settings import Settings
from imgflow.core.storage.base import NotFound, StorageUnavailable, StoredFile

if TYPE_CHECKING:  # the stubs are a dev dependency; the images carry only aiobotocore
    from aiobotocore.session import ClientCreatorContext
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.literals import BucketLocationConstraintType
    from types_aiobotocore_s3.type_defs import CompletedPartTypeDef

# S3's smallest part (but the last) is 5 MiB: a file up to this is one PUT, read whole; a larger
# one goes up in parts of this size, so an upload holds at most this much in memory.
PART = 5 * 1024 * 1024
# A download is read in pieces of this size, each one whole before it is handed on (see stream).
PIECE = 1024 * 1024
MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}


def _missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) in MISSING


@contextlib.contextmanager
def _failures(key: str, *, may_be_missing: bool = False) -> Iterator[None]:
    """S3's errors as the Storage contract names them: a missing object is NotFound where a
    caller may ask for one that is gone; anything else (refused, unreachable, timed out after its
    tries) is StorageUnavailable."""
    try:
        yield
    except ClientError as exc:
        if may_be_missing and _missing(exc):
            raise NotFound(key) from exc
        raise StorageUnavailable(f"S3 refused the request for {key!r}: {exc}", what="Storage (s3)") from exc
    except BotoCoreError as exc:  # connection refused, timeouts, a body cut short
        raise StorageUnavailable(f"S3 is unreachable: {exc}", what="Storage (s3)") from exc


def _stored(key: str, size: int, content_type: str, etag: str) -> StoredFile:
    """What was just written, from the write's own answer: a HEAD after every PUT would cost each
    job two more requests (bench/README.md, Storage backends, has what one costs) for the server's
    time of the write, which no caller of save reads; stat() has it."""
    return StoredFile(key, size, content_type, etag, datetime.now(UTC))


class S3Storage:
    """The client is made on first use, inside the event loop that will use it (aiohttp binds its
    connection pool to one loop); the bucket is checked, and created if missing, at that moment and
    again on the next call if it failed (S3 unreachable when the process started)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._bucket = settings.s3_bucket
        self._prefix = settings.s3_prefix
        self._clients = contextlib.AsyncExitStack()
        self._client: S3Client | None = None
        self._presigner: S3Client | None = None
        self._bucket_ready = False
        self._lock = asyncio.Lock()

    def _create(self, endpoint: str) -> ClientCreatorContext[S3Client]:
        s = self._settings
        config = AioConfig(
            # S3 requests one process makes at once (botocore's default, kept on purpose): more
            # wait for one, as long as their caller lets them (the timeouts cover connect and read)
            max_pool_connections=10,
            connect_timeout=s.s3_timeout_s,
            read_timeout=s.s3_timeout_s,
            # adaptive backoff on throttling and 5xx; 3 tries keep an unreachable S3 to a few
            # timeouts before the worker's own retry schedule takes over
            retries={"total_max_attempts": 3, "mode": "standard"},
            signature_version="s3v4",
            # S3-compatible servers answer path-style at one host name; AWS prefers virtual hosts
            s3={"addressing_style": "path" if s.s3_endpoint else "auto"},
            # botocore's default CRC trailers (aws-chunked bodies) are not understood by every
            # S3-compatible server; checksums only where the API requires them
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return get_session().create_client(
            "s3",
            region_name=s.s3_region,
            # empty means unset: AWS's own endpoint, botocore's credential chain (AWS_* variables,
            # web identity, instance roles)
            endpoint_url=endpoint or None,
            aws_access_key_id=s.s3_access_key_id or None,
            aws_secret_access_key=s.s3_secret_access_key or None,
            config=config,
        )

    async def _s3(self) -> S3Client:
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    self._client = await self._clients.enter_async_context(
                        self._create(self._settings.s3_endpoint)
                    )
        if not self._bucket_ready:
            # Not under the lock: a request never waits for another's answer from an S3 that may
            # not answer for a while (a storage still starting), it asks itself. Checking twice
            # at once is harmless: a bucket made first by another is taken as made.
            await self._ensure_bucket(self._client)
            self._bucket_ready = True
        return self._client

    async def _ensure_bucket(self, client: S3Client) -> None:
        try:
            await client.head_bucket(Bucket=self._bucket)
            return
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "403":  # a key allowed objects but not the bucket: the bucket is someone's
                return
            if not _missing(exc):
                raise
        region = self._settings.s3_region
        try:
            if region == "us-east-1":  # the one region that refuses to be named as a constraint
                await client.create_bucket(Bucket=self._bucket)
            else:
                constraint = cast("BucketLocationConstraintType", region)
                await client.create_bucket(
                    Bucket=self._bucket, CreateBucketConfiguration={"LocationConstraint": constraint}
                )
        except ClientError as exc:  # another replica made it first
            if exc.response.get("Error", {}).get("Code") not in (
                "BucketAlreadyOwnedByYou",
                "BucketAlreadyExists",
            ):
                raise

    def _key(self, key: str) -> str:
        return self._prefix + key

    async def save(self, key: str, path: Path, content_type: str) -> StoredFile:
        file = anyio.Path(path)
        size = (await file.stat()).st_size
        if size <= PART:
            return await self.save_bytes(key, await file.read_bytes(), content_type)
        with _failures(key):
            return await self._save_parts(key, path, size, content_type)

    async def _save_parts(self, key: str, path: Path, size: int, content_type: str) -> StoredFile:
        client = await self._s3()
        upload = await client.create_multipart_upload(
            Bucket=self._bucket, Key=self._key(key), ContentType=content_type
        )
        upload_id = upload["UploadId"]
        try:
            parts: list[CompletedPartTypeDef] = []
            async with await anyio.open_file(path, "rb") as f:
                while chunk := await f.read(PART):
                    number = len(parts) + 1
                    part = await client.upload_part(
                        Bucket=self._bucket,
                        Key=self._key(key),
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=chunk,
                    )
                    parts.append({"ETag": part["ETag"], "PartNumber": number})
            done = await client.complete_multipart_upload(
                Bucket=self._bucket, Key=self._key(key), UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            # parts of an abandoned upload are stored (and billed) until aborted; shielded so a
            # cancelled request still tidies up
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.shield(
                    client.abort_multipart_upload(Bucket=self._bucket, Key=self._key(key), UploadId=upload_id)
                )
            raise
        return _stored(key, size, content_type, done.get("ETag", ""))

    async def save_bytes(self, key: str, data: bytes, content_type: str) -> StoredFile:
        with _failures(key):
            client = await self._s3()
            put = await client.put_object(
                Bucket=self._bucket, Key=self._key(key), Body=data, ContentType=content_type
            )
        return _stored(key, len(data), content_type, put["ETag"])

    async def stat(self, key: str) -> StoredFile:
        with _failures(key, may_be_missing=True):
            client = await self._s3()
            head = await client.head_object(Bucket=self._bucket, Key=self._key(key))
        return StoredFile(
            key=key,
            size=head["ContentLength"],
            content_type=head.get("ContentType") or "application/octet-stream",
            etag=head["ETag"],  # quoted, as HTTP wants it; changes with the content
            modified=head["LastModified"].astimezone(UTC),
        )

    async def stream(self, key: str) -> AsyncIterator[bytes]:
        """The object in pieces of PIECE, one ranged GET each, read whole before it is yielded: the
        pooled connection goes back between pieces, so a consumer that takes its time (a slow
        client) holds none. A streamed body would hold one until it was read to the end, and ten
        such clients would leave every other request waiting for the pool."""
        start, size = 0, 1
        while start < size:
            with _failures(key, may_be_missing=start == 0):
                client = await self._s3()
                try:
                    response = await client.get_object(
                        Bucket=self._bucket,
                        Key=self._key(key),
                        Range=f"bytes={start}-{start + PIECE - 1}",
                    )
                except ClientError as exc:
                    if start == 0 and exc.response.get("Error", {}).get("Code") == "InvalidRange":
                        return  # an empty object has no byte to ask for
                    raise
                async with response["Body"] as body:
                    piece = await body.read()
            size = int(response["ContentRange"].rsplit("/", 1)[1])
            if not piece:
                return
            yield piece
            start += len(piece)

    async def read(self, key: str) -> bytes:
        with _failures(key, may_be_missing=True):
            client = await self._s3()
            response = await client.get_object(Bucket=self._bucket, Key=self._key(key))
            async with response["Body"] as body:
                return await body.read()

    async def delete(self, key: str) -> None:
        with _failures(key):
            client = await self._s3()
            await client.delete_object(Bucket=self._bucket, Key=self._key(key))  # 204 if missing

    async def entries(self) -> AsyncIterator[tuple[str, datetime]]:
        with _failures(self._prefix or "/"):
            client = await self._s3()
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=self._bucket, Prefix=self._prefix)
            async for page in pages:
                for item in page.get("Contents", []):
                    key = item.get("Key", "")
                    if "LastModified" in item and "/" not in key[len(self._prefix) :]:  # ours are flat
                        yield key[len(self._prefix) :], item["LastModified"].astimezone(UTC)

    async def presigned_url(
        self, key: str, *, expires_in: int | None = None, cache_control: str | None = None
    ) -> str | None:
        """A GET URL for the object, valid ``expires_in`` (default ``s3_presign_expiry_s``), signed
        for the endpoint clients use (``s3_public_endpoint``, else ``s3_endpoint``); S3 answers it
        with ``cache_control`` (response-cache-control, part of what is signed). None unless
        ``s3_presign`` is on. Signing asks the server nothing."""
        s = self._settings
        if not s.s3_presign:
            return None
        if not s.s3_public_endpoint:
            with _failures(key):
                presigner = await self._s3()
        else:
            async with self._lock:
                if self._presigner is None:
                    self._presigner = await self._clients.enter_async_context(
                        self._create(s.s3_public_endpoint)
                    )
            presigner = self._presigner
        params = {"Bucket": self._bucket, "Key": self._key(key)}
        if cache_control is not None:
            params["ResponseCacheControl"] = cache_control
        return await presigner.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=expires_in or s.s3_presign_expiry_s
        )

    async def aclose(self) -> None:
        await self._clients.aclose()
        self._client = self._presigner = None
        self._bucket_ready = False
