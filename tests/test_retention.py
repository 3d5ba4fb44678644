"""Expiry and cleanup: finished jobs and their files go after the retention period; originals can
go as soon as a job is finished; files whose job does not exist go after a grace period."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from redis.asyncio import Redis

from imgflow.core import lifecycle
from imgflow.core.jobs import Job, UploadSource, original_key
from imgflow.core.retention import delete_job
from imgflow.core.settings import Settings, StorageBackend
from imgflow.core.storage import make_storage
from imgflow.core.store import JobStore, connect
from imgflow.harness import images
from imgflow.harness.client import JOBS, Parts, api_client, submit, wait_finished
from tests.conftest import Processes


@pytest.fixture
def settings(fresh_settings: Settings, tmp_path: Path) -> Settings:
    return fresh_settings.model_copy(
        update={
            "storage_backend": StorageBackend.local,
            "storage_dir": tmp_path / "files",
            "retention_s": 2.0,
            "reconcile_interval_s": 0.25,
        }
    )


def stored(settings: Settings) -> set[str]:
    return {p.name for p in settings.storage_dir.iterdir() if not p.name.startswith(".")}


async def eventually_404(client: httpx.AsyncClient, path: str, within: float = 30) -> None:
    async with asyncio.timeout(within):
        while (await client.get(path)).status_code != 404:  # noqa: ASYNC110 (polling a server)
            await asyncio.sleep(0.1)


async def test_a_finished_job_and_its_files_are_deleted_after_the_retention(
    processes: Processes, settings: Settings
) -> None:
    _, base = processes.start_api(settings)
    processes.start_worker(settings)
    async with api_client(base, timeout=30) as client:
        job_id = (await submit(client, images.jpeg())).json()["jobId"]
        job = await wait_finished(client, job_id)
        assert job["status"] == "completed"
        expires = datetime.fromisoformat(job["expiresAt"])
        processed = datetime.fromisoformat(job["result"]["processedAt"])
        assert 1.5 <= (expires - processed).total_seconds() <= 3
        thumbnail = job["result"]["thumbnailUrl"]
        assert stored(settings) == {f"original-{job_id}", thumbnail.rsplit("/", 1)[1]}
        await eventually_404(client, f"{JOBS}/{job_id}")
        await eventually_404(client, thumbnail)
        async with asyncio.timeout(30):
            while stored(settings):  # noqa: ASYNC110 (the sweeper works in another process)
                await asyncio.sleep(0.1)
        listing = (await client.get("/api/image-processing/users/user-1/jobs")).json()["jobs"]
        assert job_id not in {j["jobId"] for j in listing}


async def test_a_borrowed_original_stays_until_its_own_job_expires(
    processes: Processes, settings: Settings
) -> None:
    """A job made from another job's upload (an ImageJob's ``uploadId``) neither deletes that
    original when it finishes (even with originals not kept) nor when it is deleted (its
    ImageJob's ttlSecondsAfterFinished, its expiry): the upload's own job still needs it."""
    settings = settings.model_copy(update={"keep_originals": False, "retention_s": 3600.0})
    _, base = processes.start_api(settings)  # no worker: the upload's own job stays pending
    async with api_client(base, timeout=30) as client:
        upload_id = (await submit(client, images.jpeg())).json()["jobId"]
    redis = Redis.from_url(settings.redis_url)
    mongo = connect(settings)
    try:
        db = mongo[settings.mongodb_database]
        parts = Parts(settings, JobStore(db), redis, make_storage(settings, db))
        borrower = Job(
            user_id="user-1", source=UploadSource(key=original_key(upload_id)), image_job="ns/batch"
        )
        await lifecycle.accept(parts, borrower)
        assert await lifecycle.cancel(parts, borrower) is not None  # finished
        await delete_job(borrower, parts.store, parts.storage, redis, settings)
        assert await parts.store.get(borrower.job_id) is None
    finally:
        await redis.aclose()
        await mongo.close()
    assert stored(settings) == {f"original-{upload_id}"}


async def test_originals_can_go_as_soon_as_the_job_is_finished(
    processes: Processes, settings: Settings
) -> None:
    settings = settings.model_copy(update={"keep_originals": False, "retention_s": 3600.0})
    _, base = processes.start_api(settings)
    processes.start_worker(settings)
    async with api_client(base, timeout=30) as client:
        job_id = (
            await submit(client, images.png_alpha(), filename="a.png", content_type="image/png")
        ).json()["jobId"]
        job = await wait_finished(client, job_id)
        assert (await client.get(job["result"]["thumbnailUrl"])).status_code == 200
    assert stored(settings) == {job["result"]["thumbnailUrl"].rsplit("/", 1)[1]}


async def test_files_whose_job_does_not_exist_are_swept_after_the_grace(
    processes: Processes, settings: Settings
) -> None:
    settings = settings.model_copy(update={"retention_s": 3600.0, "orphan_grace_s": 2.0})
    settings.storage_dir.mkdir(parents=True)
    orphan, young = f"original-{uuid.uuid4()}", f"thumbnail-{uuid.uuid4()}.jpg"
    for name in (orphan, young):
        (settings.storage_dir / name).write_bytes(b"left behind by a crash")
        (settings.storage_dir / f".{name}.type").write_text("image/jpeg")
    past = time.time() - 60
    os.utime(settings.storage_dir / orphan, (past, past))  # older than the grace
    _, base = processes.start_api(settings)
    processes.start_worker(settings)
    async with api_client(base, timeout=30) as client:
        job_id = (await submit(client, images.jpeg())).json()["jobId"]
        await wait_finished(client, job_id)
        async with asyncio.timeout(30):
            while orphan in stored(settings):  # noqa: ASYNC110 (the sweeper works in another process)
                await asyncio.sleep(0.1)
    assert f"original-{job_id}" in stored(settings)  # a file whose job exists stays
