"""The attempt rule, with real workers SIGKILLed mid-job: a job is blamed for a worker's death only
when that worker was processing it and nothing else (tests/test_failures.py: a worker killed
mid-job); held beside other jobs, it is not blamed but runs alone from then on; an image that
kills its worker alone ``max_attempts`` times fails."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from imgflow.core.jobs import Job
from imgflow.core.settings import Settings
from imgflow.core.store import JobStore, connect
from imgflow.harness import images
from imgflow.harness.client import api_client, wait_finished, wait_status
from tests.conftest import Processes
from tests.sources import ImageSource, image_source
from tests.test_failures import submit_url_job


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(timeout=30) as c:
        yield c


async def job_of(settings: Settings, job_id: str) -> Job:
    mongo = connect(settings)
    try:
        job = await JobStore(mongo[settings.mongodb_database]).get(job_id)
    finally:
        await mongo.close()
    assert job is not None
    return job


async def wait_for_requests(source: ImageSource, count: int) -> None:
    """Until the source has seen ``count`` requests (each held: a worker is mid-job)."""
    async with asyncio.timeout(60):
        while source.requests < count:  # noqa: ASYNC110 (the source counts in another thread)
            await asyncio.sleep(0.05)


def attempt_settings(fresh_settings: Settings, **update: object) -> Settings:
    return fresh_settings.model_copy(update={"allow_private_urls": True, "claim_idle_ms": 2000, **update})


async def test_a_worker_dying_with_two_jobs_blames_neither_and_runs_them_alone(
    processes: Processes, fresh_settings: Settings, client: httpx.AsyncClient
) -> None:
    settings = attempt_settings(fresh_settings, worker_concurrency=2)
    _, base = processes.start_api(settings)
    client.base_url = httpx.URL(base)
    doomed = processes.start_worker(settings)
    with image_source(images.jpeg(), hold_first=2) as source:
        job_ids = [await submit_url_job(settings, source.url) for _ in range(2)]
        for job_id in job_ids:
            await wait_status(client, job_id, "processing")
        await wait_for_requests(source, 2)  # both fetches are in flight on the doomed worker
        doomed.kill()
        processes.start_worker(settings)
        for job_id in job_ids:
            finished = await wait_finished(client, job_id)
            assert finished["status"] == "completed", finished
    for job_id in job_ids:
        job = await job_of(settings, job_id)
        assert (job.crashes, job.isolate) == (0, True), job


async def test_a_container_restarted_in_its_pod_blames_the_job_that_killed_it(
    processes: Processes, fresh_settings: Settings, client: httpx.AsyncClient
) -> None:
    """Kubernetes restarts an OOM-killed container in the same pod, under the same POD_NAME."""
    settings = attempt_settings(fresh_settings)
    _, base = processes.start_api(settings)
    client.base_url = httpx.URL(base)
    with image_source(images.jpeg(), hold_first=1) as source:
        job_id = await submit_url_job(settings, source.url)
        doomed = processes.start_worker(settings, POD_NAME="worker-pod-0")
        await wait_for_requests(source, 1)
        doomed.kill()
        processes.start_worker(settings, POD_NAME="worker-pod-0")
        assert (await wait_finished(client, job_id))["status"] == "completed"
    job = await job_of(settings, job_id)
    assert (job.crashes, job.attempts) == (1, 2)


async def test_an_image_that_kills_its_worker_alone_fails_after_max_attempts(
    processes: Processes, fresh_settings: Settings, client: httpx.AsyncClient
) -> None:
    settings = attempt_settings(fresh_settings, max_attempts=2)
    _, base = processes.start_api(settings)
    client.base_url = httpx.URL(base)
    with image_source(images.jpeg(), hold_first=100) as source:  # every fetch hangs: a "poison" job
        job_id = await submit_url_job(settings, source.url)
        for kills in (1, 2):
            worker = processes.start_worker(settings)
            await wait_for_requests(source, kills)
            worker.kill()
        processes.start_worker(settings)
        job = await wait_finished(client, job_id)
    assert job["status"] == "failed"
    assert "stopped 2 times" in job["error"], job
    assert (await job_of(settings, job_id)).crashes == 2
