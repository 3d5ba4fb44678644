"""One rule for every option, on every path: a variant name the worker's model refuses (one ending
in a newline) is refused at the door (422), whether it comes in the form's variants, a preset or
an ImageJob. A job stored with such a name by an API that accepted it stays readable (GET, events,
listing) and fails once, with the reason: no retry loop, its place in the tenant's cap freed."""

from __future__ import annotations

import json

import pytest
from redis.asyncio import Redis

from imgflow.core import lifecycle, quota
from imgflow.core.jobs import Job, UploadSource
from imgflow.core.options import InvalidOption, read_variants
from imgflow.core.outputs import OutputLimits, ThumbnailSpec
from imgflow.core.settings import Settings
from imgflow.core.storage import make_storage
from imgflow.core.store import JobStore, connect
from imgflow.harness import images
from imgflow.harness.client import JOBS, Parts, api_client, submit, wait_finished
from imgflow.operator.imagejob import job_outputs
from tests.conftest import Processes, Stack

BAD_NAMES = ["a\n", "a\r\n", "\na", "a b", "-a", "a" * 33, ""]


@pytest.mark.parametrize("name", BAD_NAMES)
async def test_a_bad_variant_name_is_refused_at_the_door(stack: Stack, name: str) -> None:
    variants = json.dumps([{"name": name, "width": 50, "height": 50}])
    answer = await submit(stack.client, images.jpeg(64, 64), variants=variants)
    assert answer.status_code == 422, answer.text
    assert "variants[0].name" in answer.json()["detail"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_presets_and_image_jobs_refuse_it_too(name: str) -> None:
    with pytest.raises(ValueError, match=r"presets\.p\[0\]\.name"):  # InvalidOption within
        Settings(presets={"p": [{"name": name, "width": 50}]})
    with pytest.raises(InvalidOption, match=r"operations\.variants\[0\]\.name"):
        job_outputs({"operations": {"variants": [{"name": name}]}}, {}, OutputLimits(max_dimension=4096))
    with pytest.raises(InvalidOption):
        read_variants([{"name": name}], OutputLimits(max_dimension=4096))


async def test_a_job_stored_with_a_bad_name_is_readable_and_fails_once(
    processes: Processes, fresh_settings: Settings
) -> None:
    # the worker's claim period short: a message left unacknowledged would come back soon
    settings = fresh_settings.model_copy(update={"claim_idle_ms": 1000})
    _, base = processes.start_api(settings)
    redis = Redis.from_url(settings.redis_url)
    mongo = connect(settings)
    try:
        db = mongo[settings.mongodb_database]
        store = JobStore(db)
        storage = make_storage(settings, db)
        await storage.save_bytes("original-bad", images.jpeg(64, 64), "image/jpeg")
        # what an API that took "a\n" stored: the name was never checked against the model
        bad = ThumbnailSpec(width=40, height=40).model_copy(update={"name": "a\n"})
        job = Job(user_id="u1", source=UploadSource(key="original-bad"), spec=bad, variants=[bad])
        await lifecycle.accept(Parts(settings, store, redis, storage), job, take_place=True)

        async with api_client(base, timeout=30) as client:
            seen = await client.get(f"{JOBS}/{job.job_id}")
            assert seen.status_code == 200, seen.text
            assert seen.json()["status"] == "pending"
            assert seen.json()["variants"][0]["name"] == "a\n"
            listed = await client.get("/api/image-processing/users/u1/jobs")
            assert listed.status_code == 200, listed.text
            assert [j["jobId"] for j in listed.json()["jobs"]] == [job.job_id]

            processes.start_worker(settings)
            done = await wait_finished(client, job.job_id)
            assert done["status"] == "failed"
            assert "variants[0].name" in done["error"], done["error"]
            events = await client.get(f"{JOBS}/{job.job_id}/events")
            assert events.status_code == 200 and '"status":"failed"' in events.text
            assert (await client.get("/api/image-processing/users/u1/jobs")).status_code == 200

        stored = await store.get(job.job_id)
        assert stored is not None and stored.retries == 0
        assert await quota.count(redis, settings, job.tenant) == 0  # its place is free
        pending = await redis.xpending(settings.stream, settings.consumer_group)
        assert pending["pending"] == 0  # acknowledged: nothing will deliver it again
    finally:
        await mongo.close()
        await redis.aclose()
