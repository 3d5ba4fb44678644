"""The reconciler republishes only what is really lost: jobs waiting in the stream are left alone
however long they wait, and every job runs exactly once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from imgflow.core.jobs import Job, JobStatus
from imgflow.core.queue import entries_key
from imgflow.core.settings import Settings, StorageBackend
from imgflow.core.store import connect
from imgflow.harness.client import submit_many
from tests.conftest import Processes

JOBS = 1000


@pytest.fixture
def settings(fresh_settings: Settings, tmp_path: Path) -> Settings:
    return fresh_settings.model_copy(
        update={
            "requeue_after_s": 1.0,
            "reconcile_interval_s": 0.25,
            "storage_backend": StorageBackend.local,
            "storage_dir": tmp_path / "files",
        }
    )


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


async def test_a_waiting_backlog_is_not_republished_and_each_job_runs_once(
    processes: Processes, settings: Settings, redis: Redis
) -> None:
    processes.start_api(settings)  # its reconciler runs every 0.25 s, republishing after 1 s
    job_ids = await submit_many(settings, redis, JOBS)
    await asyncio.sleep(5 * settings.requeue_after_s)
    # before: every waiting job was republished each requeue_after_s (20 jobs -> 136 entries in 12 s)
    assert await redis.xlen(settings.stream) == JOBS
    assert await redis.hlen(entries_key(settings)) == JOBS

    processes.start_worker(settings.model_copy(update={"worker_concurrency": 4}))
    mongo = connect(settings)
    try:
        collection = mongo[settings.mongodb_database]["jobs"]
        async with asyncio.timeout(600):  # only stops a hung test
            while await collection.count_documents({"user_id": "requeue", "status": "completed"}) < JOBS:  # noqa: ASYNC110
                await asyncio.sleep(2)
        jobs = [Job.from_document(doc) async for doc in collection.find({"user_id": "requeue"})]
    finally:
        await mongo.close()
    assert sorted(j.job_id for j in jobs) == sorted(job_ids)
    assert {j.status for j in jobs} == {JobStatus.completed}
    assert {j.attempts for j in jobs} == {1}  # nobody ran a job twice
    # not one duplicate published, while waiting nor while draining (Redis 7 counts every XADD)
    assert (await redis.xinfo_stream(settings.stream))["entries-added"] == JOBS
    assert await redis.hlen(entries_key(settings)) == 0  # forgotten at each acknowledgement


async def test_a_job_whose_message_is_gone_is_published_again(
    processes: Processes, settings: Settings, redis: Redis
) -> None:
    processes.start_api(settings)
    lost, kept = await submit_many(settings, redis, 2)
    entries = await redis.hgetall(entries_key(settings))
    await redis.xdel(settings.stream, entries[lost.encode()])  # as if trimmed away
    async with asyncio.timeout(30):
        while (await redis.hget(entries_key(settings), lost)) == entries[lost.encode()]:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    assert await redis.xlen(settings.stream) == 2  # the lost one again, and the kept one once
    assert await redis.hget(entries_key(settings), kept) == entries[kept.encode()]
