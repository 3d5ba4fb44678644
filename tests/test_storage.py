"""Both storage backends behind the one interface, and the whole job path on the local one."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from imgflow.core.settings import Settings, StorageBackend
from imgflow.core.storage import NotFound, Storage, make_storage
from imgflow.core.store import connect
from tests import images
from tests.client import api_client, submit, wait_finished
from tests.conftest import Processes


@pytest.fixture(params=[StorageBackend.gridfs, StorageBackend.local])
async def storage(
    request: pytest.FixtureRequest, fresh_settings: Settings, tmp_path: Path
) -> AsyncIterator[Storage]:
    settings = fresh_settings.model_copy(update={"storage_backend": request.param, "storage_dir": tmp_path})
    mongo = connect(settings)
    yield make_storage(settings, mongo[settings.mongodb_database])
    await mongo.close()


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
