"""A job's cost, known at the door (imgflow.core.cost): larger, costlier outputs cost more, the job
view shows it, and a job above IMGFLOW_MAX_JOB_COST, or above its API key's own ceiling, is refused
naming what to reduce."""

from __future__ import annotations

import uuid

from imgflow.core import cost
from imgflow.core.outputs import Fit, OutputFormat, ThumbnailSpec
from imgflow.core.settings import Settings
from imgflow.harness import images
from imgflow.harness.client import JOBS, api_client, make_key, submit
from tests.conftest import Processes, Stack

PHOTO = cost.Source(1500, 1000)


def estimate(**options: object) -> int:
    return cost.estimate([ThumbnailSpec.model_validate(options)], PHOTO)


def test_costlier_outputs_cost_more() -> None:
    by_format = [estimate(width=800, height=800, format=f) for f in ("jpeg", "png", "webp", "avif")]
    assert by_format == sorted(by_format) and len(set(by_format)) == 4
    assert estimate(width=100, height=100) < estimate(width=1000, height=1000)
    assert estimate(width=400, height=400) < estimate(width=400, height=400, blur=2.0)
    assert estimate(width=400, height=400) < estimate(width=400, height=400, gravity="attention")
    # outside keeps the aspect ratio past the box: more pixels than cover
    assert estimate(width=800, height=800) < estimate(width=800, height=800, fit=Fit.outside)
    two = [ThumbnailSpec(name="a", width=400, height=400), ThumbnailSpec(name="b", width=400, height=400)]
    assert cost.estimate(two, PHOTO) > estimate(width=400, height=400)


def test_a_job_over_the_limit_is_told_what_to_reduce() -> None:
    specs = [
        ThumbnailSpec(name="small", width=100, height=100),
        ThumbnailSpec(name="huge", width=4096, height=4096, format=OutputFormat.avif, enlarge=True),
    ]
    why = cost.too_costly(specs, PHOTO, limit=10_000)
    assert why is not None and "variant 'huge' (4096x4096 avif)" in why and "IMGFLOW_MAX_JOB_COST" in why
    assert cost.too_costly(specs[:1], PHOTO, limit=10_000) is None


async def test_the_api_shows_a_jobs_cost_and_refuses_a_costly_one(
    processes: Processes, fresh_settings: Settings
) -> None:
    _, base = processes.start_api(fresh_settings.model_copy(update={"max_job_cost": 5_000}))
    async with api_client(base, timeout=30) as client:
        small = await submit(client, images.jpeg(640, 480))
        assert small.status_code == 202, small.text
        view = (await client.get(f"{JOBS}/{small.json()['jobId']}")).json()
        assert view["cost"] == cost.estimate([ThumbnailSpec()], cost.Source(640, 480))
        assert view["priority"] == "interactive"

        batch = await submit(client, images.jpeg(640, 480), priority="batch")
        assert (await client.get(f"{JOBS}/{batch.json()['jobId']}")).json()["priority"] == "batch"

        costly = await submit(client, images.jpeg(2000, 1500), width="2000", height="1500", format="avif")
        assert costly.status_code == 422, costly.text
        assert costly.json()["title"] == "Job too costly"
        assert "2000x1500 avif" in costly.json()["detail"], costly.json()


async def test_a_key_holds_its_jobs_to_its_own_ceiling(stack: Stack) -> None:
    admin, tenant = stack.client, f"frugal-{uuid.uuid4().hex[:8]}"
    above = {"maxJobCost": stack.settings.max_job_cost + 1}
    refused = await admin.post(
        "/api/admin/keys", json={"tenant": tenant, "scopes": ["jobs:write"], "name": "x", "limits": above}
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"].startswith("limits.maxJobCost must be at most the service's")

    key = await make_key(admin, tenant, "jobs:write", "jobs:read", maxJobCost=2_000)
    listed = (await admin.get("/api/admin/keys", params={"tenant": tenant})).json()["keys"]
    assert [k["limits"]["maxJobCost"] for k in listed] == [2_000]
    async with api_client(stack.base_url, key=key, timeout=30) as client:
        assert (await submit(client, images.jpeg(640, 480))).status_code == 202
        # ~3,800 ms: within the service's ceiling, above the key's
        costly = await submit(client, images.jpeg(1000, 1000), width="1000", height="1000", format="avif")
    assert costly.status_code == 422, costly.text
    problem = costly.json()
    assert problem["title"] == "Job too costly", problem
    assert "2,000 allowed per job (this API key's limits.maxJobCost)" in problem["detail"], problem
    assert "1000x1000 avif" in problem["detail"], problem
    # the same job, sent with a key that has no ceiling of its own, is accepted
    accepted = await submit(admin, images.jpeg(1000, 1000), width="1000", height="1000", format="avif")
    assert accepted.status_code == 202, accepted.text
