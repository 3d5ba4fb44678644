"""Accepted means durable: a job answered 202 survives a crash of the database, and a worker that
holds a message whose job has no record restores the job (or fails it visibly), never drops it.

The database test runs no worker, so nothing can restore a lost record behind its back: it reads
the records themselves right after the restart.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgflow.core.jobs import original_key
from imgflow.core.settings import Settings, StorageBackend
from imgflow.core.storage import make_storage
from imgflow.core.store import connect
from imgflow.harness import faults, images
from imgflow.harness.client import ADMIN_KEY, api_client, submit, wait_finished
from imgflow.harness.servers import MongoChoice, crash_mongodb, free_port, mongodb_server, wait_for_port
from tests.conftest import Processes, make_settings

BURST = 40  # the trial: 4 of 40 accepted jobs were gone after the database's crash


class Database:
    """A MongoDB-wire server of the test's own, which can crash (SIGKILL, every process of it) and
    start again on the same data."""

    def __init__(self, workdir: Path, *, crash_unsafe: bool = False) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.choice: MongoChoice = mongodb_server(workdir, self.port, crash_unsafe=crash_unsafe)
        self.url = self.choice.url

    def start(self) -> None:
        assert self.choice.server is not None
        self.choice.server.start()
        wait_for_port(self.port, process=self.choice.server.process)

    def crash(self) -> None:
        crash_mongodb(self.choice, self.workdir)

    def stop(self) -> None:
        if self.choice.server is not None:
            self.choice.server.terminate()


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    if os.environ.get("MONGODB_URL"):
        pytest.skip("needs a MongoDB-wire server this test can kill; MONGODB_URL points at an external one")
    db = Database(tmp_path / "mongo")
    db.start()
    yield db
    db.stop()


async def accepted_and_lost(
    database: Database, processes: Processes, redis_url: str
) -> tuple[list[str], set[str], set[str]]:
    """A burst of uploads, the database killed within a millisecond of the last 202 and started
    again: the jobs accepted, those without a record, and those the user's listing lacks."""
    # originals in a directory: the database's WAL then holds the jobs alone, as the walwriter's
    # 200 ms delay (not its 1 MB threshold) bounds what a crash of the old settings loses
    storage = {"storage_backend": StorageBackend.local, "storage_dir": database.workdir.parent / "storage"}
    settings = make_settings(redis_url, database.url, **storage)
    _, base = processes.start_api(settings)
    accepted = await faults.accept_then_crash(base, ADMIN_KEY, BURST, database.crash)
    database.start()
    async with api_client(base, timeout=30) as client:
        unlisted = set(accepted) - await faults.listed(client, "faults")
    return accepted, faults.missing(database.url, settings.mongodb_database, accepted), unlisted


async def test_jobs_accepted_right_before_the_database_is_killed_are_there_after_its_restart(
    database: Database, processes: Processes, redis_url: str
) -> None:
    accepted, lost, unlisted = await accepted_and_lost(database, processes, redis_url)
    assert len(accepted) >= BURST
    assert (lost, unlisted) == (set(), set())


async def lose(settings: Settings, job_id: str, *, original_too: bool = False) -> None:
    """What the database's crash did to the issue's jobs: the record is gone from the database
    (its snapshot in Redis and its message stay), and with ``original_too`` the stored original."""
    mongo = connect(settings)
    try:
        db = mongo[settings.mongodb_database]
        assert (await db["jobs"].delete_one({"_id": job_id})).deleted_count == 1
        if original_too:
            await make_storage(settings, db).delete(original_key(job_id))
    finally:
        await mongo.close()


async def recorded_status(settings: Settings, job_id: str) -> str | None:
    mongo = connect(settings)
    try:
        doc = await mongo[settings.mongodb_database]["jobs"].find_one({"_id": job_id})
    finally:
        await mongo.close()
    return None if doc is None else str(doc["status"])


async def test_a_job_whose_record_the_database_lost_is_restored_from_its_message_and_completed(
    processes: Processes, fresh_settings: Settings
) -> None:
    _, base = processes.start_api(fresh_settings)
    async with api_client(base, timeout=30) as client:
        job_id = (await submit(client, images.jpeg())).json()["jobId"]
        await lose(fresh_settings, job_id)
        processes.start_worker(fresh_settings)
        job = await wait_finished(client, job_id)
        assert job["status"] == "completed", job
        assert (await client.get(job["result"]["thumbnailUrl"])).status_code == 200
        assert await recorded_status(fresh_settings, job_id) == "completed"
        assert job_id in await faults.listed(client, "user-1")


async def test_a_job_lost_with_its_original_is_failed_visibly_not_dropped(
    processes: Processes, fresh_settings: Settings
) -> None:
    _, base = processes.start_api(fresh_settings)
    async with api_client(base, timeout=30) as client:
        job_id = (await submit(client, images.jpeg())).json()["jobId"]
        await lose(fresh_settings, job_id, original_too=True)
        processes.start_worker(fresh_settings)
        job = await wait_finished(client, job_id)
        assert job["status"] == "failed", job
        assert "lost" in job["error"] and "submit the image again" in job["error"]
        assert await recorded_status(fresh_settings, job_id) == "failed"
        assert job_id in await faults.listed(client, "user-1")
