"""What one client's reads may cost a replica, against real servers: a listing costs one database
query whatever page it names, and a query past the time limit answers 503."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import httpx

from bench.ops import mongo_commands
from imgflow.core.jobs import Job, JobStatus, UploadSource, utcnow
from imgflow.core.settings import Settings
from imgflow.core.store import connect
from tests.client import JOBS, api_client
from tests.conftest import Processes

USER = "deep-lister"
JOB_COUNT = 3000


async def many_jobs(settings: Settings, count: int) -> list[str]:
    """``count`` finished jobs of one user, inserted at once; their ids newest first."""
    mongo = connect(settings)
    try:
        start = utcnow()
        jobs = [
            Job(
                user_id=USER,
                source=UploadSource(key="original-none"),
                status=JobStatus.failed,
                error="made by the test",
                created_at=start - timedelta(milliseconds=i),
            )
            for i in range(count)
        ]
        await mongo[settings.mongodb_database]["jobs"].insert_many([job.to_document() for job in jobs])
        return [job.job_id for job in jobs]
    finally:
        await mongo.close()


async def mongodb_commands(client: httpx.AsyncClient) -> Counter[str]:
    return await mongo_commands([str(client.base_url.join("/metrics"))])


async def test_numbered_pages_cost_one_query_and_stop_at_the_bound(
    processes: Processes, fresh_settings: Settings
) -> None:
    # no reconciler round during the test: only the listings below may touch MongoDB
    settings = fresh_settings.model_copy(update={"reconcile_interval_s": 3600})
    newest_first = await many_jobs(settings, JOB_COUNT)
    _, base = processes.start_api(settings)
    listing = f"/api/image-processing/users/{USER}/jobs"
    async with api_client(base, timeout=60) as client:
        for page in (1000, 12):  # 99,900 and 1,100 jobs deep: past the bound of 1,000
            deep = await client.get(listing, params={"page": page, "limit": 100})
            assert deep.status_code == 400, deep.text[:300]
            assert deep.headers["content-type"] == "application/problem+json"
            assert "cursor" in deep.json()["detail"]

        before = await mongodb_commands(client)
        deepest = await client.get(listing, params={"page": 11, "limit": 100})  # 1,000 deep
        assert deepest.status_code == 200, deepest.text[:300]
        assert [job["jobId"] for job in deepest.json()["jobs"]] == newest_first[1000:1100]
        spent = await mongodb_commands(client) - before
        spent.pop("killCursors", None)  # FerretDB leaves the cursor open; closing it reads nothing
        assert spent == Counter({"find": 1})

        # its cursor goes on from there
        after = await client.get(listing, params={"cursor": deepest.json()["nextCursor"], "limit": 100})
        assert [job["jobId"] for job in after.json()["jobs"]] == newest_first[1100:1200]


async def test_a_query_past_the_mongodb_time_limit_answers_503(
    processes: Processes, fresh_settings: Settings
) -> None:
    await many_jobs(fresh_settings, JOB_COUNT)
    # far less than a query over thousands of jobs takes
    settings = fresh_settings.model_copy(update={"reconcile_interval_s": 3600, "mongodb_timeout_s": 0.001})
    _, base = processes.start_api(settings)
    async with api_client(base, timeout=60) as client:
        listed = await client.get(f"/api/image-processing/users/{USER}/jobs", params={"limit": 100})
        assert listed.status_code == 503, listed.text[:300]
        assert listed.headers["retry-after"]
        assert "time limit" in listed.json()["detail"]
        job = await client.get(f"{JOBS}/00000000-0000-0000-0000-000000000000")
        assert job.status_code == 503, job.text
