"""Small helpers for talking to a running API the way a client would, and for submitting many jobs
the way the operator does."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any

import httpx
from redis.asyncio import Redis

from imgflow.core import lifecycle
from imgflow.core.jobs import Job, UploadSource
from imgflow.core.outputs import ThumbnailSpec
from imgflow.core.settings import Settings
from imgflow.core.storage import Storage, make_storage
from imgflow.core.store import JobStore, connect
from imgflow.harness import images

JOBS = "/api/image-processing/jobs"
FINISHED = ("completed", "failed", "cancelled")
# the bootstrap admin key of every API the suite starts (make_settings): sees every tenant
ADMIN_KEY = "imgf_admin_" + secrets.token_hex(16)
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


def api_client(base_url: str = "", *, key: str = ADMIN_KEY, **kwargs: Any) -> httpx.AsyncClient:
    """An HTTP client for an API the suite started, sending ``key`` (default: the admin key)."""
    return httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, **kwargs)


async def make_key(admin: httpx.AsyncClient, tenant: str, *scopes: str, **limits: float) -> str:
    """A new API key of ``tenant`` with these scopes, made by an admin client."""
    reply = await admin.post(
        "/api/admin/keys", json={"tenant": tenant, "scopes": list(scopes), "name": "test", "limits": limits}
    )
    assert reply.status_code == 201, reply.text
    key: str = reply.json()["key"]
    return key


async def submit(
    client: httpx.AsyncClient,
    data: bytes,
    *,
    user_id: str | None = "user-1",
    filename: str = "image.jpg",
    content_type: str = "image/jpeg",
    **fields: str,
) -> httpx.Response:
    form = dict(fields)
    if user_id is not None:
        form["userId"] = user_id
    return await client.post(JOBS, files={"file": (filename, data, content_type)}, data=form)


async def wait_finished(client: httpx.AsyncClient, job_id: str, *, within: float = 90.0) -> dict[str, Any]:
    """Poll until the job is completed or failed. ``within`` only stops a hung test; it is no target."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        job: dict[str, Any] = (await client.get(f"{JOBS}/{job_id}")).json()
        if job["status"] in FINISHED:
            return job
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job {job_id} still {job['status']} after {within}s")
        await asyncio.sleep(0.1)


async def wait_status(client: httpx.AsyncClient, job_id: str, status: str, *, within: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while (await client.get(f"{JOBS}/{job_id}")).json()["status"] != status:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"job {job_id} never reached {status}")
        await asyncio.sleep(0.02)


@dataclass(frozen=True)
class Parts:
    """What imgflow.core.lifecycle's transitions use, for a test that holds them apart."""

    settings: Settings
    store: JobStore
    redis: Redis
    storage: Storage


async def submit_many(settings: Settings, redis: Redis, count: int, user_id: str = "requeue") -> list[str]:
    """``count`` jobs through the path the API and the operator share, on one stored original."""
    mongo = connect(settings)
    try:
        db = mongo[settings.mongodb_database]
        parts = Parts(settings, JobStore(db), redis, make_storage(settings, db))
        await parts.store.ensure_indexes()
        await parts.storage.save_bytes("original-shared", images.jpeg(320, 240), "image/jpeg")
        source = UploadSource(key="original-shared")
        spec = ThumbnailSpec(width=32, height=32)
        jobs = [Job(user_id=user_id, source=source, spec=spec) for _ in range(count)]
        for job in jobs:
            await lifecycle.accept(parts, job)
        return [job.job_id for job in jobs]
    finally:
        await mongo.close()
