"""The API's connection pools are bounded, and so is the wait for one of their connections: a request
that finds none free within IMGFLOW_REDIS_POOL_WAIT_S answers 503 with Retry-After, the requests holding
the connections are served, and /readyz, on connections of its own, stays ready."""

from __future__ import annotations

import asyncio

import httpx
from redis.asyncio import Redis

from imgflow.core.settings import Settings
from imgflow.harness import images
from imgflow.harness.client import JOBS, api_client, make_key, submit
from tests.conftest import Processes


async def test_a_request_finding_no_free_redis_connection_answers_503_and_the_others_are_served(
    processes: Processes, fresh_settings: Settings
) -> None:
    pool = 2
    settings = fresh_settings.model_copy(
        update={"redis_pool_size": pool, "redis_pool_wait_s": 0.5, "reconcile_interval_s": 3600.0}
    )
    _, base = processes.start_api(settings)
    redis = Redis.from_url(settings.redis_url)
    async with api_client(base, timeout=60) as admin:
        key = await make_key(admin, "pooled", "jobs:read", "jobs:write")
        async with api_client(base, key=key, timeout=60) as client:
            accepted = await submit(client, images.jpeg(64, 48))
            assert accepted.status_code == 202, accepted.text
            job = f"{JOBS}/{accepted.json()['jobId']}"
            # Redis holds every write until unpaused, the rate limit's script among them: each read
            # keeps its pool connection meanwhile, as a slow Redis would make it
            await redis.client_pause(60_000, all=False)  # writes only
            try:
                reads = [asyncio.create_task(client.get(job)) for _ in range(pool + 4)]
                early: list[httpx.Response] = []
                async with asyncio.timeout(60):  # only stops a hung test
                    for answered in asyncio.as_completed(reads):
                        early.append(await answered)
                        if len(early) == 4:
                            break
                for response in early:  # answered while every connection was still held
                    assert response.status_code == 503, response.text
                    assert response.headers["content-type"] == "application/problem+json"
                    assert int(response.headers["retry-after"]) >= 1
                    assert "connection" in response.json()["detail"]
                ready = await admin.get("/readyz")
                assert ready.status_code == 200, ready.text
            finally:
                await redis.client_unpause()
                await redis.aclose()
            statuses = sorted(response.status_code for response in await asyncio.gather(*reads))
    assert statuses == [200] * pool + [503] * 4
