"""What a scale-down would throw away, as the operator reads it: a real worker's heartbeat in real
Redis, turned into its pod's ``pod-deletion-cost`` by ``imgflow.operator.podcost`` (the ranking
itself is in tests/test_operator_logic.py; a ReplicaSet acting on it, in tests/node)."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from imgflow.core.settings import Settings
from imgflow.harness import images
from imgflow.harness.client import api_client, wait_finished, wait_status
from imgflow.operator.podcost import heartbeat_pattern, parse_heartbeats
from tests.conftest import Processes
from tests.sources import image_source
from tests.test_failures import submit_url_job


async def costs(redis: Redis, settings: Settings) -> dict[str, int]:
    keys = [key async for key in redis.scan_iter(match=heartbeat_pattern(settings.stream))]
    return parse_heartbeats(await redis.mget(keys) if keys else [])


async def wait_cost(redis: Redis, settings: Settings, what: str, check: object) -> dict[str, int]:
    assert callable(check)
    deadline = time.monotonic() + 60
    while not check(found := await costs(redis, settings)):
        assert time.monotonic() < deadline, f"{what}: {found}"
        await asyncio.sleep(0.2)
    return found


async def test_a_pod_costs_more_the_longer_its_job_has_run_and_nothing_once_idle(
    processes: Processes, fresh_settings: Settings
) -> None:
    settings = fresh_settings.model_copy(update={"allow_private_urls": True})
    _, base = processes.start_api(settings)
    processes.start_worker(settings)
    redis = Redis.from_url(settings.redis_url)
    try:
        async with api_client(base, timeout=60) as client:
            with image_source(images.jpeg(), hold_first=1) as source:
                job_id = await submit_url_job(settings, source.url)
                await wait_status(client, job_id, "processing")
                # The fetch is held: the job stays in flight, and the worker's beats go on.
                first = await wait_cost(
                    redis, settings, "a busy pod", lambda c: any(v > 0 for v in c.values())
                )
                later = await wait_cost(
                    redis, settings, "a higher cost as the job runs on", lambda c: max(c.values()) >= 3
                )
                assert list(later) == list(first)  # the same pod, one worker
                source.release.set()
                assert (await wait_finished(client, job_id))["status"] == "completed"
            await wait_cost(redis, settings, "an idle pod", lambda c: set(c.values()) == {0})
    finally:
        await redis.aclose()
