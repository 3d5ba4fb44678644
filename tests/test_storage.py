"""The storage backends behind the one interface (GridFS, a directory, S3 on a real SeaweedFS), and
the whole job path on the local and S3 ones, with S3's presigned redirect."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from imgflow.core.settings import AuthMode, Settings, StorageBackend
from imgflow.core.storage import NotFound, Storage, StorageUnavailable, make_storage
from imgflow.core.storage.s3 import PART, S3Storage
from imgflow.core.store import connect
from imgflow.harness import images
from imgflow.harness.client import api_client, make_key, submit, wait_finished
from imgflow.harness.servers import S3Server, free_port
from tests.conftest import Processes, on_s3


@pytest.fixture(params=[StorageBackend.gridfs, StorageBackend.local, StorageBackend.s3])
async def storage(
    request: pytest.FixtureRequest, fresh_settings: Settings, tmp_path: Path
) -> AsyncIterator[Storage]:
    settings = fresh_settings.model_copy(update={"storage_backend": request.param, "storage_dir": tmp_path})
    if request.param is StorageBackend.s3:
        settings = on_s3(settings, request.getfixturevalue("s3"))
    mongo = connect(settings)
    backend = make_storage(settings, mongo[settings.mongodb_database])
    yield backend
    await backend.aclose()
    await mongo.close()


@pytest.fixture
async def s3_storage(fresh_settings: Settings, s3: S3Server) -> AsyncIterator[S3Storage]:
    backend = S3Storage(on_s3(fresh_settings, s3))
    yield backend
    await backend.aclose()


async def test_save_stat_read_stream_replace_delete(storage: Storage, tmp_path: Path) -> None:
    first = await storage.save_bytes("thumbnail-a.jpg", b"x" * 300_000, "image/jpeg")
    assert (first.size, first.content_type) == (300_000, "image/jpeg")
    assert await storage.read("thumbnail-a.jpg") == b"x" * 300_000
    assert b"".join([chunk async for chunk in storage.stream("thumbnail-a.jpg")]) == b"x" * 300_000

    source = tmp_path / "upload.bin"
    source.write_bytes(b"png-bytes")
    second = await storage.save("thumbnail-a.jpg", source, "image/png")  # replaces
    assert (second.size, second.content_type) == (9, "image/png")
    assert second.etag != first.etag
    assert (await storage.stat("thumbnail-a.jpg")).etag == second.etag

    await storage.delete("thumbnail-a.jpg")
    await storage.delete("thumbnail-a.jpg")  # deleting what is gone is fine
    with pytest.raises(NotFound):
        await storage.stat("thumbnail-a.jpg")
    with pytest.raises(NotFound):
        await storage.read("thumbnail-a.jpg")


async def test_entries_list_what_is_stored_with_when(storage: Storage) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    for key in ("original-1", "thumbnail-1.jpg"):
        await storage.save_bytes(key, b"bytes", "image/jpeg")
    found = {key: when async for key, when in storage.entries()}
    assert set(found) == {"original-1", "thumbnail-1.jpg"}  # no sidecars, no partial files
    assert all(before < when <= datetime.now(UTC) + timedelta(seconds=5) for when in found.values())
    await storage.delete("original-1")
    assert [key async for key, _ in storage.entries()] == ["thumbnail-1.jpg"]


async def test_the_local_backend_serves_the_whole_job_path(
    processes: Processes, fresh_settings: Settings, tmp_path: Path
) -> None:
    files = tmp_path / "files"
    settings = fresh_settings.model_copy(
        update={"storage_backend": StorageBackend.local, "storage_dir": files}
    )
    _, base = processes.start_api(settings)
    processes.start_worker(settings)
    async with api_client(base, timeout=30) as client:
        job_id = (await submit(client, images.png_alpha(), format="png")).json()["jobId"]
        job = await wait_finished(client, job_id)
        assert job["status"] == "completed", job
        thumb = await client.get(job["result"]["thumbnailUrl"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert (files / f"thumbnail-{job_id}.png").read_bytes() == thumb.content
    assert (files / f"original-{job_id}").exists()


async def test_stream_raises_not_found_before_the_first_chunk(storage: Storage) -> None:
    chunks = storage.stream("thumbnail-missing.jpg")
    with pytest.raises(NotFound):
        await anext(chunks)


async def test_no_backend_presigns_unless_told_to(storage: Storage) -> None:
    await storage.save_bytes("thumbnail-p.jpg", b"bytes", "image/jpeg")
    assert await storage.presigned_url("thumbnail-p.jpg") is None  # IMGFLOW_S3_PRESIGN is off


async def test_s3_told_to_presign_gives_a_url_that_serves_the_file(
    fresh_settings: Settings, s3: S3Server
) -> None:
    storage: Storage = S3Storage(on_s3(fresh_settings, s3, s3_presign=True))
    try:
        await storage.save_bytes("thumbnail-p.jpg", b"bytes", "image/jpeg")
        url = await storage.presigned_url("thumbnail-p.jpg")
        assert url is not None
        async with httpx.AsyncClient(timeout=30) as client:  # no key: the signature is the permission
            reply = await client.get(url)
        assert (reply.status_code, reply.content) == (200, b"bytes")
    finally:
        await storage.aclose()


async def test_s3_sends_a_large_file_in_parts(s3_storage: S3Storage, tmp_path: Path) -> None:
    data = os.urandom(2 * PART + 12345)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    stored = await s3_storage.save("original-big", source, "image/jpeg")
    assert (stored.size, stored.content_type) == (len(data), "image/jpeg")
    assert stored.etag.endswith('-3"'), stored.etag  # S3's ETag of a 3-part upload
    assert await s3_storage.read("original-big") == data
    assert b"".join([chunk async for chunk in s3_storage.stream("original-big")]) == data


async def test_s3_creates_a_missing_bucket(fresh_settings: Settings, s3: S3Server) -> None:
    bucket = f"imgflow-new-{uuid.uuid4().hex[:8]}"
    storage = S3Storage(on_s3(fresh_settings, s3, s3_bucket=bucket))
    try:
        await storage.save_bytes("thumbnail-b.jpg", b"bytes", "image/jpeg")
        assert await storage.read("thumbnail-b.jpg") == b"bytes"
    finally:
        await storage.aclose()


async def test_s3_checks_credentials(fresh_settings: Settings, s3: S3Server) -> None:
    storage = S3Storage(on_s3(fresh_settings, s3, s3_secret_access_key="not-the-secret"))
    try:
        with pytest.raises(StorageUnavailable) as refused:  # not NotFound: the worker retries it later
            await storage.stat("thumbnail-a.jpg")
        assert any(code in str(refused.value) for code in ("SignatureDoesNotMatch", "AccessDenied", "403"))
    finally:
        await storage.aclose()


async def test_an_unreachable_s3_fails_soon_and_not_as_missing(
    fresh_settings: Settings, s3: S3Server
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # loopback, nothing listening
    storage = S3Storage(on_s3(fresh_settings, s3, s3_endpoint=nowhere, s3_timeout_s=1.0))
    try:
        for call in (storage.read("original-1"), storage.save_bytes("original-1", b"x", "image/jpeg")):
            async with asyncio.timeout(20):
                with pytest.raises(StorageUnavailable):  # the worker's passing failure, retried
                    await call
    finally:
        await storage.aclose()


async def test_a_request_does_not_wait_behind_another_stuck_on_an_s3_that_did_not_answer(
    fresh_settings: Settings, s3: S3Server
) -> None:
    """What timed out the first helm test after a node restart: the process's start-up request
    reached an S3 that accepted it and had not answered yet, and the upload that came once the
    storage answered waited behind it (its read timeout, three tries) instead of asking itself."""
    answering = False
    unanswered: list[asyncio.StreamWriter] = []
    first_held = asyncio.Event()
    target = urlsplit(s3.endpoint)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def gateway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not answering:
            unanswered.append(writer)  # accepted, read, never answered: a storage still starting
            first_held.set()
            return
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(gateway, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    # a read timeout far longer than the test: waiting behind the stuck request never ends in it
    settings = on_s3(fresh_settings, s3, s3_endpoint=f"http://127.0.0.1:{port}", s3_timeout_s=600)
    storage = S3Storage(settings)
    stuck = asyncio.create_task(storage.stat("readiness-probe"))
    try:
        await asyncio.wait_for(first_held.wait(), timeout=60)
        answering = True
        async with asyncio.timeout(60):  # a guard against the hang, no target
            await storage.save_bytes("original-1", b"stored", "image/jpeg")
            assert await storage.read("original-1") == b"stored"
        assert not stuck.done()  # the first request still waits for its answer
    finally:
        stuck.cancel()
        await storage.aclose()
        server.close()
        for writer in unanswered:
            writer.close()


async def test_a_thumbnail_while_s3_is_unreachable_is_503(
    processes: Processes, fresh_settings: Settings, s3: S3Server
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # loopback, nothing listening
    settings = on_s3(fresh_settings, s3, s3_endpoint=nowhere, s3_timeout_s=1.0, auth=AuthMode.off)
    _, base = processes.start_api(settings)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        reply = await client.get(f"/uploads/thumbnail-{uuid.uuid4()}.jpg")
    assert reply.status_code == 503 and reply.headers["retry-after"], reply.text


async def test_an_upload_while_s3_is_unreachable_is_503_and_frees_its_place(
    processes: Processes, fresh_settings: Settings, s3: S3Server
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # loopback, nothing listening
    # a tenant may have one unfinished job: a refused upload must not keep that place
    settings = on_s3(fresh_settings, s3, s3_endpoint=nowhere, s3_timeout_s=1.0, tenant_max_unfinished=1)
    _, base = processes.start_api(settings)
    async with api_client(base, timeout=30) as admin:
        key = await make_key(admin, "acme", "jobs:write")
    async with api_client(base, key=key, timeout=30) as client:
        for _ in range(2):  # the second would be 429 had the first kept its place
            reply = await submit(client, images.jpeg())
            assert reply.status_code == 503, reply.text
            assert reply.headers["retry-after"]
            assert "Storage (s3) is unreachable" in reply.json()["detail"]


async def test_the_s3_backend_serves_the_whole_job_path_and_presigned_redirects(
    processes: Processes, fresh_settings: Settings, s3: S3Server
) -> None:
    settings = on_s3(fresh_settings, s3)
    _, base = processes.start_api(settings)
    _, presigning = processes.start_api(settings.model_copy(update={"s3_presign": True}))
    processes.start_worker(settings)
    storage = S3Storage(settings)
    try:
        original = images.png_alpha()
        async with api_client(base, timeout=30) as client:
            job_id = (await submit(client, original, format="png")).json()["jobId"]
            job = await wait_finished(client, job_id)
            assert job["status"] == "completed", job
            path = job["result"]["thumbnailUrl"]
            thumb = await client.get(path)
            reply = await client.post(
                "/api/admin/keys", json={"tenant": "elsewhere", "scopes": ["jobs:read"], "name": "other"}
            )
            other_key = reply.json()["key"]
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
        name = path.rsplit("/", 1)[1]
        assert await storage.read(name) == thumb.content
        assert await storage.read(f"original-{job_id}") == original

        async with api_client(presigning, timeout=30) as client:
            redirect = await client.get(path)
        assert redirect.status_code == 307, redirect.text
        assert redirect.headers["cache-control"] == "no-store"
        location = redirect.headers["location"]
        assert location.startswith(f"{s3.endpoint}/{settings.s3_bucket}/{settings.s3_prefix}{name}?")
        async with httpx.AsyncClient(timeout=30) as anyone:  # no API key: the URL is the permission
            fetched = await anyone.get(location)
            assert fetched.status_code == 200
            assert fetched.content == thumb.content and fetched.headers["content-type"] == "image/png"
            forged = urlsplit(location)._replace(
                path=f"/{settings.s3_bucket}/{settings.s3_prefix}original-{job_id}"
            )
            assert (await anyone.get(forged.geturl())).status_code == 403  # the signature names the key

        # another tenant learns nothing, not even where the file would be
        async with api_client(presigning, key=other_key, timeout=30) as other:
            hidden = await other.get(path, follow_redirects=False)
        assert hidden.status_code == 404 and "location" not in hidden.headers
    finally:
        await storage.aclose()
