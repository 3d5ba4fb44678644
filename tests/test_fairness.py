"""Tenants share the workers fairly (imgflow.core.schedule): by cost and weight, not by who queued
first; a tenant's jobs in flight are capped across workers; interactive jobs go before batch ones.

The ordering tests queue all their jobs before a real worker starts (so the order is the scheduler's, not
the submission's), then read the order in which the jobs were finished from MongoDB.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from imgflow.core import cost, jobkeys, lifecycle, schedule
from imgflow.core.jobs import Job, JobStatus, Priority, UploadSource
from imgflow.core.outputs import OutputFormat, ThumbnailSpec
from imgflow.core.queue import ensure_group
from imgflow.core.settings import Settings, StorageBackend
from imgflow.core.storage import make_storage
from imgflow.core.store import JobStore, connect
from imgflow.harness import images
from imgflow.harness.client import Parts
from imgflow.harness.servers import free_port, redis_server, wait_for_port
from tests.conftest import Processes

SOURCE = cost.Source(1600, 1600)  # the outputs below are no larger: none is enlarged
SMALL = ThumbnailSpec(width=32, height=32)
HEAVY = ThumbnailSpec(width=600, height=600, format=OutputFormat.webp)
SLOW = ThumbnailSpec(width=1600, height=1600, format=OutputFormat.webp)  # long enough to be seen running


@pytest.fixture
def settings(fresh_settings: Settings, tmp_path: Path) -> Settings:
    return fresh_settings.model_copy(
        update={
            "storage_backend": StorageBackend.local,
            "storage_dir": tmp_path / "files",
            "worker_concurrency": 1,
        }
    )


@dataclass(frozen=True)
class Queue(Parts):
    jobs: Any  # the jobs collection, to read them all at once

    async def all(self) -> list[Job]:
        return [Job.from_document(doc) async for doc in self.jobs.find({"user_id": "fair"})]


@pytest.fixture
async def parts(settings: Settings) -> AsyncIterator[Queue]:
    mongo = connect(settings)
    redis = Redis.from_url(settings.redis_url)
    db = mongo[settings.mongodb_database]
    found = Queue(settings, JobStore(db), redis, make_storage(settings, db), db["jobs"])
    await found.store.ensure_indexes()
    await found.storage.save_bytes("original-shared", images.jpeg(SOURCE.width, SOURCE.height), "image/jpeg")
    yield found
    await redis.aclose()
    await mongo.close()


async def queue(parts: Queue, tenant: str, spec: ThumbnailSpec, count: int, **fields: object) -> list[str]:
    """``count`` jobs of ``tenant``, accepted as the API accepts them (with their cost)."""
    ids = []
    for _ in range(count):
        job = Job(
            user_id="fair",
            tenant=tenant,
            source=UploadSource(key="original-shared"),
            spec=spec,
            cost=cost.estimate([spec], SOURCE),
            **fields,
        )
        await lifecycle.accept(parts, job)
        ids.append(job.job_id)
    return ids


async def finished_in_order(parts: Queue, count: int) -> list[Job]:
    """Every job once all ``count`` are finished, in the order they were finished."""
    jobs: list[Job] = []
    async with asyncio.timeout(600):  # only stops a hung test
        while len(jobs) < count:
            await asyncio.sleep(0.5)
            jobs = [job for job in await parts.all() if job.status.finished]
    assert {job.status for job in jobs} == {JobStatus.completed}, [job.error for job in jobs]
    return sorted(jobs, key=lambda job: job.result.processed_at if job.result else job.updated_at)


def tenants(jobs: Sequence[Job]) -> list[str]:
    return [job.tenant for job in jobs]


async def test_a_small_job_does_not_wait_behind_another_tenants_flood(
    processes: Processes, settings: Settings, parts: Queue
) -> None:
    await queue(parts, "flood", HEAVY, 20)
    [small] = await queue(parts, "small", SMALL, 1)
    processes.start_worker(settings)
    order = [job.job_id for job in await finished_in_order(parts, 21)]
    # in the order queued it was last; by cost it waits for at most the one flood job before it
    assert order.index(small) <= 1, order.index(small)


async def test_weights_share_the_workers_in_cost(
    processes: Processes, settings: Settings, parts: Queue
) -> None:
    for _ in range(30):  # queued alternately: in queue order each would get half
        await queue(parts, "heavy-weight", SMALL, 1)
        await queue(parts, "light-weight", SMALL, 1)
    processes.start_worker(settings.model_copy(update={"tenant_weights": {"heavy-weight": 2.0}}))
    served = tenants((await finished_in_order(parts, 60))[:30])  # while both had jobs waiting
    ratio = served.count("heavy-weight") / served.count("light-weight")
    assert 1.6 <= ratio <= 2.5, served


async def test_a_tenants_jobs_in_flight_are_capped_across_workers(
    processes: Processes, settings: Settings, parts: Queue
) -> None:
    capped = settings.model_copy(update={"tenant_max_inflight": 1, "worker_concurrency": 3})
    processes.start_worker(capped)
    processes.start_worker(capped)
    for tenant in ("one", "two"):  # the workers wait for them: started, they take jobs at once
        await queue(parts, tenant, SLOW, 4)
    most: dict[str, int] = {"one": 0, "two": 0}
    together = 0
    async with asyncio.timeout(600):  # only stops a hung test
        while True:
            jobs = await parts.all()
            running = tenants([job for job in jobs if job.status is JobStatus.processing])
            for tenant in most:
                most[tenant] = max(most[tenant], running.count(tenant))
            together = max(together, len(running))
            if all(job.status.finished for job in jobs):
                break
            await asyncio.sleep(0.02)
    assert most == {"one": 1, "two": 1}  # six slots free, one job of each tenant at a time
    assert together == 2  # the other tenant's job ran beside it


async def test_interactive_jobs_go_before_the_tenants_batch_jobs(
    processes: Processes, settings: Settings, parts: Queue
) -> None:
    await queue(parts, "acme", SMALL, 12, priority=Priority.batch)
    [interactive] = await queue(parts, "acme", SMALL, 1)
    processes.start_worker(settings)
    order = [job.job_id for job in await finished_in_order(parts, 13)]
    assert order.index(interactive) <= 1, order.index(interactive)


async def test_a_take_runs_as_many_redis_commands_whatever_the_tenants_at_their_cap(
    fresh_settings: Settings, tmp_path: Path
) -> None:
    """With every tenant but one at its cap (one job in flight, one waiting), the next take finds
    that one in as many Redis commands (a script's each counted) with 2,000 such tenants as with
    10: it does not walk the tenants at their cap."""
    port = free_port()
    server = redis_server(tmp_path / "redis", port).start()
    try:
        wait_for_port(port, process=server.process)
        redis = Redis.from_url(f"redis://127.0.0.1:{port}/0")
        calls = {n: await commands_of_the_next_take(redis, fresh_settings, n) for n in (10, 2000)}
        await redis.aclose()
    finally:
        server.terminate()
    assert calls[10] == calls[2000], calls


async def commands_of_the_next_take(redis: Redis, settings: Settings, capped: int) -> int:
    settings = settings.model_copy(update={"stream": f"{settings.stream}:{capped}", "tenant_max_inflight": 1})
    await ensure_group(redis, settings)
    spec = ThumbnailSpec(width=32, height=32)
    # the free tenant was served much already: the tenants at their cap come before it
    served = Job(user_id="fair", tenant="free", source=UploadSource(key="k"), spec=spec, cost=10**6)
    async with redis.pipeline(transaction=False) as pipe:
        await jobkeys.publish(pipe, settings, [served])
        await pipe.execute()
    first = await schedule.take(redis, settings, "worker")
    assert first is not None
    async with redis.pipeline(transaction=False) as pipe:
        schedule.done(pipe, settings, [first.entry_id])
        await pipe.execute()
    jobs = [
        Job(user_id="fair", tenant=f"t{i:05d}", source=UploadSource(key="k"), spec=spec, cost=10)
        for i in range(capped)
        for _ in range(2)
    ]
    async with redis.pipeline(transaction=False) as pipe:
        await jobkeys.publish(pipe, settings, jobs)
        await pipe.execute()
    for _ in range(capped):  # one job of each tenant in flight: each at its cap
        assert await schedule.take(redis, settings, "worker") is not None
    last = Job(user_id="fair", tenant="free", source=UploadSource(key="k"), spec=spec, cost=10)
    async with redis.pipeline(transaction=False) as pipe:
        await jobkeys.publish(pipe, settings, [last])
        await pipe.execute()
    await schedule.park(redis, settings)
    before = await redis_calls(redis)
    taken = await schedule.take(redis, settings, "worker")
    after = await redis_calls(redis)
    assert taken is not None and taken.fields[b"tenant"] == b"free"
    return after - before


async def redis_calls(redis: Redis) -> int:
    """Commands the server has run so far (a script's commands each count)."""
    stats = await redis.info("commandstats")
    return sum(int(each["calls"]) for each in stats.values())
