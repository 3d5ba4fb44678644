"""Accepted means durable: a job answered 202 survives a crash of the database.

The database test runs no worker, so nothing can restore a lost record behind its back: it reads
the records themselves right after the restart.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench import faults
from imgflow.core.settings import StorageBackend
from scripts.servers import MongoChoice, crash_mongodb, free_port, mongodb_server, wait_for_port
from tests.client import ADMIN_KEY, api_client
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


async def listed(client: httpx.AsyncClient, user_id: str) -> set[str]:
    """Every job id the API lists for the user (read from the database, not from snapshots),
    retrying while it answers 503 (the database just restarted) as a client would."""
    ids: set[str] = set()
    params = {"limit": "100"}
    while True:
        for _ in range(120):
            reply = await client.get(f"/api/image-processing/users/{user_id}/jobs", params=params)
            if reply.status_code != 503:
                break
            await asyncio.sleep(0.5)
        assert reply.status_code == 200, reply.text
        page = reply.json()
        ids.update(job["jobId"] for job in page["jobs"])
        if not page.get("nextCursor"):
            return ids
        params["cursor"] = page["nextCursor"]


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
        unlisted = set(accepted) - await listed(client, "faults")
    return accepted, faults.missing(database.url, settings.mongodb_database, accepted), unlisted


async def test_jobs_accepted_right_before_the_database_is_killed_are_there_after_its_restart(
    database: Database, processes: Processes, redis_url: str
) -> None:
    accepted, lost, unlisted = await accepted_and_lost(database, processes, redis_url)
    assert len(accepted) >= BURST
    assert (lost, unlisted) == (set(), set())
