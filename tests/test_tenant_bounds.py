"""What a tenant's key cannot reach beyond its tenant: the bootstrap key's tenant, every job of its
tenant through a webhook without the right to read them, more endpoints or watermarks than the
caps by racing requests (endpoints stored before the caps count), nor the cap of unfinished jobs
by accepting a job twice."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from pymongo.errors import DuplicateKeyError
from redis.asyncio import Redis

from imgflow.core import lifecycle, quota
from imgflow.core.endpoints import Endpoint, EndpointStore
from imgflow.core.jobs import Job, UrlSource
from imgflow.core.keys import KeyStore, Scope, new_key
from imgflow.core.settings import Settings
from imgflow.core.storage import make_storage
from imgflow.core.store import JobStore, connect
from imgflow.harness import images
from imgflow.harness.client import Parts, api_client, make_key, submit
from tests.conftest import Processes

READ, WRITE = "jobs:read", "jobs:write"
FAST = {"create_per_s": 1000.0, "create_burst": 1000.0}  # the caps are under test, not the rates


@pytest.fixture
async def api(processes: Processes, fresh_settings: Settings) -> tuple[Settings, str]:
    settings = fresh_settings.model_copy(
        update={"allow_private_urls": True, "max_uploads_per_key": 100, "max_concurrent_uploads": 100}
    )
    _, base = processes.start_api(settings)
    return settings, base


async def test_no_key_is_given_the_bootstrap_keys_tenant(api: tuple[Settings, str]) -> None:
    """The default tenant's jobs are the bootstrap key's and those stored before keys existed: a
    key of that tenant would see them all."""
    settings, base = api
    async with api_client(base, timeout=30) as admin:
        made = await admin.post(
            "/api/admin/keys",
            json={"tenant": settings.default_tenant, "scopes": [READ, WRITE], "name": "squatter"},
        )
        assert made.status_code == 422, made.text
        assert made.headers["content-type"] == "application/problem+json"
        assert "IMGFLOW_DEFAULT_TENANT" in made.json()["detail"]
        listed = (await admin.get("/api/admin/keys", params={"tenant": settings.default_tenant})).json()
        assert listed["keys"] == []


async def test_a_key_made_earlier_for_the_bootstrap_keys_tenant_is_refused(
    api: tuple[Settings, str],
) -> None:
    """A key of the default tenant stored before such keys were refused sees nothing of it."""
    settings, base = api
    async with api_client(base, timeout=30) as admin:
        legacy = (await submit(admin, images.jpeg())).json()["jobId"]  # the bootstrap key's job
    record, key = new_key(settings.default_tenant, "made before", [Scope.jobs_read, Scope.jobs_write])
    mongo = connect(settings)
    try:
        await KeyStore(mongo[settings.mongodb_database]).insert(record)
    finally:
        await mongo.close()
    async with api_client(base, key=key, timeout=30) as squatter:
        refused = await squatter.get(f"/api/image-processing/jobs/{legacy}")
    assert refused.status_code == 403, refused.text
    assert "IMGFLOW_DEFAULT_TENANT" in refused.json()["detail"]


async def test_only_a_key_that_reads_the_jobs_may_subscribe_to_them(api: tuple[Settings, str]) -> None:
    """A webhook endpoint receives every job of the tenant, the callbackUrl secret verifies every
    job's delivery: a key that may only create jobs can have neither, nor delete an endpoint, and
    the OpenAPI document says so."""
    _, base = api
    async with api_client(base, timeout=30) as admin:
        writer_key = await make_key(admin, "acme", WRITE)
        both_key = await make_key(admin, "acme", READ, WRITE)
        reader_key = await make_key(admin, "acme", READ)
    hook = {"url": "http://127.0.0.1:9/hooks"}
    async with api_client(base, key=writer_key, timeout=30) as writer:
        refused = await writer.post("/api/webhooks", json=hook)
        assert refused.status_code == 403, refused.text
        assert "'jobs:read'" in refused.json()["detail"]
        assert (await writer.post("/api/webhooks/secret")).status_code == 403
        assert (await submit(writer, images.jpeg())).status_code == 202  # it still creates jobs
    async with api_client(base, key=reader_key, timeout=30) as reader:
        assert (await reader.post("/api/webhooks", json=hook)).status_code == 403
    async with api_client(base, key=both_key, timeout=30) as both:
        created = await both.post("/api/webhooks", json=hook)
        assert created.status_code == 201
        assert (await both.post("/api/webhooks/secret")).status_code == 200
        assert len((await both.get("/api/webhooks")).json()["endpoints"]) == 1
        endpoint = f"/api/webhooks/{created.json()['id']}"
        for key in (writer_key, reader_key):
            async with api_client(base, key=key, timeout=30) as lacking:
                assert (await lacking.delete(endpoint)).status_code == 403
        assert (await both.delete(endpoint)).status_code == 204
        paths = (await both.get("/openapi.json")).json()["paths"]
    for path, method in (("", "post"), ("/secret", "post"), ("/{endpoint_id}", "delete")):
        description = paths[f"/api/webhooks{path}"][method]["description"]
        assert "jobs:write and jobs:read scopes" in description, (path, method)


async def _race(client: httpx.AsyncClient, count: int, send: str) -> list[int]:
    async def one(n: int) -> int:
        if send == "endpoint":
            reply = await client.post("/api/webhooks", json={"url": f"http://127.0.0.1:9/hooks/{n}"})
        else:
            files = {"file": (f"{n}.png", images.png_alpha(16, 16), "image/png")}
            reply = await client.post("/api/watermarks", files=files)
        assert reply.status_code in (201, 409), reply.text
        return reply.status_code

    return list(await asyncio.gather(*(one(n) for n in range(count))))


async def test_racing_registrations_stop_at_the_endpoint_cap(api: tuple[Settings, str]) -> None:
    _, base = api
    async with api_client(base, timeout=60) as admin:
        key = await make_key(admin, "racer", READ, WRITE, **FAST)
    async with api_client(base, key=key, timeout=60) as client:
        answers = await _race(client, 40, "endpoint")
        endpoints = (await client.get("/api/webhooks")).json()["endpoints"]
    assert (answers.count(201), answers.count(409)) == (20, 20)
    assert len(endpoints) == 20


async def test_racing_uploads_stop_at_the_watermark_cap(api: tuple[Settings, str]) -> None:
    _, base = api
    async with api_client(base, timeout=60) as admin:
        key = await make_key(admin, "racer", READ, WRITE, **FAST)
    async with api_client(base, key=key, timeout=60) as client:
        before = await _race(client, 80, "watermark")  # a few at a time would do; racing is quicker
        assert before.count(201) == 80
        answers = await _race(client, 40, "watermark")
        marks = (await client.get("/api/watermarks")).json()["watermarks"]
    assert (answers.count(201), answers.count(409)) == (20, 20)
    assert len(marks) == 100


async def test_a_second_pass_over_an_accepted_job_leaves_its_place(fresh_settings: Settings) -> None:
    """An operator's second pass that accepts a source's job again (same id) is refused as a
    duplicate and must not free the place the first one holds under the tenant's cap."""
    redis = Redis.from_url(fresh_settings.redis_url)
    mongo = connect(fresh_settings)
    try:
        db = mongo[fresh_settings.mongodb_database]
        parts = Parts(fresh_settings, JobStore(db), redis, make_storage(fresh_settings, db))
        job = Job(user_id="u", tenant="acme", source=UrlSource(url="https://example.com/a.jpg"))
        await lifecycle.accept(parts, job, take_place=True)
        with pytest.raises(DuplicateKeyError):
            await lifecycle.accept(parts, job, take_place=True)
        assert await quota.count(redis, fresh_settings, "acme") == 1
    finally:
        await redis.aclose()
        await mongo.close()


async def test_endpoints_stored_before_the_cap_count_toward_it(api: tuple[Settings, str]) -> None:
    """Endpoints stored as they were before the cap held places (a plain insert) count toward it:
    with one place left, one of ten racing registrations is stored."""
    settings, base = api
    async with api_client(base, timeout=60) as admin:
        key = await make_key(admin, "racer", READ, WRITE, **FAST)
    mongo = connect(settings)
    try:
        store = EndpointStore(mongo[settings.mongodb_database])
        for n in range(19):
            await store.insert(
                Endpoint(tenant="racer", url=f"http://127.0.0.1:9/{n}", events=["job.completed"])
            )
    finally:
        await mongo.close()
    async with api_client(base, key=key, timeout=60) as client:
        answers = await _race(client, 10, "endpoint")
        endpoints = (await client.get("/api/webhooks")).json()["endpoints"]
    assert (answers.count(201), answers.count(409)) == (1, 9)
    assert len(endpoints) == 20
