"""What a client's reads of a job cost the database: nothing. GET a job and following its events
are answered from the job's snapshot in Redis (imgflow.core.snapshots), so their cost does not
grow with the jobs stored (FerretDB 1.24 scans for every query). Counted with the API's own
``imgflow_mongodb_commands_total``; the snapshot is checked against MongoDB's truth."""

from __future__ import annotations

import httpx
from redis.asyncio import Redis

from imgflow.core import jobkeys
from imgflow.core.settings import Settings
from imgflow.core.snapshots import Snapshots
from imgflow.core.store import JobStore, connect
from imgflow.harness import images
from imgflow.harness.client import JOBS, api_client, submit, wait_finished
from imgflow.harness.ops import mongo_commands
from tests.conftest import Processes


async def mongodb_commands(client: httpx.AsyncClient) -> int:
    return sum((await mongo_commands([str(client.base_url.join("/metrics"))])).values())


async def test_reading_a_job_asks_nothing_of_mongodb(processes: Processes, fresh_settings: Settings) -> None:
    # no reconciler round during the test: only the reads below may touch MongoDB
    settings = fresh_settings.model_copy(update={"reconcile_interval_s": 3600})
    _, base = processes.start_api(settings)
    processes.start_worker(settings)
    async with api_client(base, timeout=30) as client:
        job_id = (await submit(client, images.jpeg())).json()["jobId"]
        done = await wait_finished(client, job_id)
        assert done["status"] == "completed"

        before = await mongodb_commands(client)
        for _ in range(30):
            assert (await client.get(f"{JOBS}/{job_id}")).json() == done
        for _ in range(3):
            events = (await client.get(f"{JOBS}/{job_id}/events")).text
            assert '"status":"completed"' in events
        assert await mongodb_commands(client) == before

        # the snapshot is the job as MongoDB has it
        redis = Redis.from_url(settings.redis_url)
        mongo = connect(settings)
        try:
            store = JobStore(mongo[settings.mongodb_database], Snapshots(redis, settings))
            truth, snapshot = await store.get(job_id), await Snapshots(redis, settings).get(job_id)
            assert snapshot == truth
            # without a snapshot (Redis lost it), a read falls back to MongoDB, once
            await jobkeys.forget_snapshots(redis, settings, job_id)
            assert (await client.get(f"{JOBS}/{job_id}")).json() == done
            assert await mongodb_commands(client) == before + 1
            assert (await client.get(f"{JOBS}/{job_id}")).json() == done
            assert await mongodb_commands(client) == before + 1  # refilled by that read
        finally:
            await mongo.close()
            await redis.aclose()
