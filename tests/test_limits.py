"""Rate limits, the per-tenant quota, Idempotency-Key and the open mode, on real servers: what a
client sees at the limit (429, Retry-After, RateLimit headers), and that 20 identical requests in
parallel make one job."""

from __future__ import annotations

import asyncio
import re

import httpx
from redis.asyncio import Redis

from imgflow.core import quota
from imgflow.core.settings import AuthMode, Settings
from imgflow.harness import images
from imgflow.harness.client import JOBS, api_client, make_key, submit, wait_finished
from tests.conftest import Processes
from tests.test_auth import problem

READ, WRITE = "jobs:read", "jobs:write"
POLICY = re.compile(r'^"(create|read)";q=(\d+);w=(\d+)$')
REMAINING = re.compile(r'^"(create|read)";r=(\d+);t=(\d+)$')


async def test_rate_limits_per_key_for_creates_and_reads(
    processes: Processes, fresh_settings: Settings
) -> None:
    _, base = processes.start_api(fresh_settings)
    async with api_client(base, timeout=30) as admin:
        key = await make_key(
            admin, "acme", READ, WRITE, create_per_s=0.2, create_burst=2, read_per_s=0.2, read_burst=3
        )
        other = await make_key(admin, "acme", READ, WRITE, create_per_s=0.2, create_burst=2)
    async with (
        api_client(base, key=key, timeout=30) as client,
        api_client(base, key=other, timeout=30) as second,
    ):
        creates = [await submit(client, images.jpeg()) for _ in range(3)]
        assert [r.status_code for r in creates] == [202, 202, 429]
        assert POLICY.match(creates[0].headers["ratelimit-policy"]).groups() == ("create", "2", "10")  # type: ignore[union-attr]
        assert [REMAINING.match(r.headers["ratelimit"]).group(2) for r in creates] == ["1", "0", "0"]  # type: ignore[union-attr]
        over = problem(creates[2], 429)
        assert "retry in" in over["detail"] and 1 <= int(creates[2].headers["retry-after"]) <= 6
        # reads are counted apart from creates, and each key apart from the others
        reads = [await client.get("/api/image-processing/users/user-1/jobs") for _ in range(4)]
        assert [r.status_code for r in reads] == [200, 200, 200, 429]
        assert reads[0].headers["ratelimit-policy"].startswith('"read";q=3')
        assert (await submit(second, images.jpeg())).status_code == 202


async def test_a_tenant_may_hold_only_so_many_unfinished_jobs(
    processes: Processes, fresh_settings: Settings, redis_url: str
) -> None:
    settings = fresh_settings.model_copy(update={"tenant_max_unfinished": 2})
    _, base = processes.start_api(settings)
    async with api_client(base, timeout=30) as admin:
        acme = await make_key(admin, "acme", READ, WRITE)
        globex = await make_key(admin, "globex", READ, WRITE)
    async with (
        api_client(base, key=acme, timeout=30) as client,
        api_client(base, key=globex, timeout=30) as other,
    ):
        first = [await submit(client, images.jpeg()) for _ in range(2)]
        assert [r.status_code for r in first] == [202, 202]  # no worker yet: both stay pending
        refused = problem(await submit(client, images.jpeg()), 429)
        assert "2 jobs pending or processing" in refused["detail"]
        assert (await submit(other, images.jpeg())).status_code == 202  # another tenant's cap
        processes.start_worker(settings)
        for reply in first:
            assert (await wait_finished(client, reply.json()["jobId"]))["status"] == "completed"
        third = await submit(client, images.jpeg())
        assert third.status_code == 202, third.text
        await wait_finished(client, third.json()["jobId"])
        # removals lost (Redis restored from an old copy, say): the finished jobs still hold places
        redis = Redis.from_url(redis_url)
        try:
            for reply in (*first, third):
                await redis.zadd(quota.unfinished_key(settings, "acme"), {reply.json()["jobId"]: 1})
        finally:
            await redis.aclose()
        # ... and the cap frees them by asking the job store, instead of refusing for ever
        assert (await submit(client, images.jpeg())).status_code == 202


async def test_idempotency_key_replays_the_first_answer(
    processes: Processes, fresh_settings: Settings
) -> None:
    # 20 identical requests at once below: each needs an upload slot of the key to be fingerprinted
    settings = fresh_settings.model_copy(update={"max_uploads_per_key": 20})
    _, base = processes.start_api(settings)
    processes.start_worker(settings)
    async with api_client(base, timeout=30) as admin:
        acme = await make_key(admin, "acme", READ, WRITE, create_burst=100)
        globex = await make_key(admin, "globex", READ, WRITE)
    data = images.jpeg()
    async with api_client(base, key=acme, timeout=30) as client:

        async def send(key: str, body: bytes = data, **fields: str) -> httpx.Response:
            files = {"file": ("a.jpg", body, "image/jpeg")}
            form = {"userId": "idem", **fields}
            return await client.post(JOBS, files=files, data=form, headers={"Idempotency-Key": key})

        first = await send("order-1")
        again = await send("order-1")
        assert first.status_code == again.status_code == 202
        assert again.json() == first.json() and again.headers["location"] == first.headers["location"]
        problem(await send("order-1", images.png_alpha()), 422)  # other bytes
        problem(await send("order-1", width="50"), 422)  # other fields
        problem(await send("x" * 256), 400)
        # another tenant's identical key is its own
        async with api_client(base, key=globex, timeout=30) as other:
            files = {"file": ("a.jpg", data, "image/jpeg")}
            theirs = await other.post(
                JOBS, files=files, data={"userId": "idem"}, headers={"Idempotency-Key": "order-1"}
            )
        assert theirs.status_code == 202 and theirs.json()["jobId"] != first.json()["jobId"]
        # a failed first request leaves nothing: the same key works once the request is right
        problem(await send("order-2", b"not an image"), 415)
        assert (await send("order-2")).status_code == 202

        # 20 identical requests at once: one job; the others answer it or 409 (still in progress)
        answers = await asyncio.gather(*(send("order-3") for _ in range(20)))
        codes = sorted(r.status_code for r in answers)
        assert set(codes) <= {202, 409} and 202 in codes, codes
        assert len({r.json()["jobId"] for r in answers if r.status_code == 202}) == 1
        for r in answers:
            if r.status_code == 409:
                assert problem(r, 409)["title"] == "Request in progress" and r.headers["retry-after"]
        listed = (await client.get("/api/image-processing/users/idem/jobs", params={"limit": 100})).json()[
            "jobs"
        ]
        assert len(listed) == 3  # order-1, order-2, order-3
        await wait_finished(client, first.json()["jobId"])


async def test_auth_off_is_the_original_open_api(processes: Processes, fresh_settings: Settings) -> None:
    settings = fresh_settings.model_copy(update={"auth": AuthMode.off, "admin_key": None})
    api, base = processes.start_api(settings)
    processes.start_worker(settings)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        accepted = await submit(client, images.jpeg(), user_id="open")
        assert accepted.status_code == 202 and "ratelimit" not in accepted.headers
        job = await wait_finished(client, accepted.json()["jobId"])
        assert job["status"] == "completed"
        thumbnail = await client.get(job["result"]["thumbnailUrl"])
        assert thumbnail.status_code == 200 and thumbnail.headers["cache-control"].startswith("public")
        listed = (await client.get("/api/image-processing/users/open/jobs")).json()["jobs"]
        assert [j["jobId"] for j in listed] == [job["jobId"]]
    assert re.search(r"WARNING imgflow.api IMGFLOW_AUTH=off: anyone", api.log.read_text())
