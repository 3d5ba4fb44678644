"""Cancelling a job (``DELETE /api/image-processing/jobs/{jobId}``) on real servers, checked as a
client would: the job's status and events, its outputs in storage, its webhook, its tenant's
place, and what a worker does with it afterwards."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import httpx
import pytest

from imgflow.core.settings import Settings, StorageBackend
from imgflow.harness import images
from imgflow.harness.client import JOBS, api_client, make_key, submit, wait_finished
from imgflow.harness.receivers import Receiver, receiver
from tests.conftest import Processes
from tests.test_auth import problem
from tests.test_webhooks import SECRET, wait_calls

READ, WRITE = "jobs:read", "jobs:write"
# a job a worker spends seconds on (large AVIF outputs), so that it is caught in flight
HEAVY = json.dumps(
    [{"name": f"v{i}", "width": 1200 - 20 * i, "height": 1200, "format": "avif"} for i in range(4)]
)


@pytest.fixture
def settings(fresh_settings: Settings, tmp_path: Path) -> Settings:
    return fresh_settings.model_copy(
        update={
            "allow_private_urls": True,  # the webhook receiver is on loopback
            "webhook_secret": SECRET,
            "storage_backend": StorageBackend.local,  # the outputs are files a test can list
            "storage_dir": tmp_path / "stored",
            "tenant_max_unfinished": 2,
        }
    )


def outputs(settings: Settings, job_id: str) -> list[str]:
    return sorted(p.name for p in settings.storage_dir.glob(f"thumbnail-{job_id}*"))


def event_types(hook: Receiver) -> list[str]:
    return [json.loads(body)["type"] for _, body in hook.calls]


async def statuses(client: httpx.AsyncClient, job_id: str) -> list[str]:
    """Every status the job's event stream reports, until it ends (the job finished)."""
    seen = []
    async with client.stream("GET", f"{JOBS}/{job_id}/events") as stream:
        async for line in stream.aiter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line.removeprefix("data: "))["status"])
    return seen


async def wait_processing(client: httpx.AsyncClient, job_id: str, *, within: float = 90.0) -> None:
    deadline = time.monotonic() + within
    while (job := (await client.get(f"{JOBS}/{job_id}")).json())["status"] != "processing":
        assert job["status"] == "pending", job
        assert time.monotonic() < deadline, "never started"
        await asyncio.sleep(0.02)


async def test_a_pending_job_is_cancelled_at_once_and_frees_its_place(
    processes: Processes, settings: Settings
) -> None:
    _, base = processes.start_api(settings)  # no worker yet: jobs stay pending
    async with api_client(base, timeout=30) as admin:
        key = await make_key(admin, "acme", READ, WRITE)
    with receiver() as hook:
        async with api_client(base, key=key, timeout=30) as client:
            first = (await submit(client, images.jpeg(), callbackUrl=hook.url)).json()["jobId"]
            second = (await submit(client, images.jpeg())).json()["jobId"]
            problem(await submit(client, images.jpeg()), 429)  # the tenant's cap of 2

            reply = await client.delete(f"{JOBS}/{first}")
            assert reply.status_code == 200, reply.text
            assert reply.json()["status"] == "cancelled" and reply.json()["expiresAt"]
            assert (await client.get(f"{JOBS}/{first}")).json()["status"] == "cancelled"
            listed = await client.get(
                "/api/image-processing/users/user-1/jobs", params={"status": "cancelled"}
            )
            assert [j["jobId"] for j in listed.json()["jobs"]] == [first]
            wait_calls(hook, 1)
            assert event_types(hook) == ["job.cancelled"]
            assert json.loads(hook.calls[0][1])["data"]["status"] == "cancelled"

            third = await submit(client, images.jpeg())  # its place is free again
            assert third.status_code == 202, third.text

            # a worker started now drops the cancelled job's message and makes the others
            processes.start_worker(settings)
            for job_id in (second, third.json()["jobId"]):
                assert (await wait_finished(client, job_id))["status"] == "completed"
            assert (await client.get(f"{JOBS}/{first}")).json()["status"] == "cancelled"
            assert await statuses(client, first) == ["cancelled"]
            assert outputs(settings, first) == []
    assert event_types(hook) == ["job.cancelled"]  # nothing more for it


async def test_a_job_in_flight_stops_at_its_next_step_with_no_output_left(
    processes: Processes, settings: Settings
) -> None:
    _, base = processes.start_api(settings)
    processes.start_worker(settings)
    with receiver() as hook:
        async with api_client(base, timeout=120) as client:
            reply = await submit(client, images.jpeg(2400, 2400), variants=HEAVY, callbackUrl=hook.url)
            assert reply.status_code == 202, reply.text
            job_id = reply.json()["jobId"]
            followed = asyncio.create_task(statuses(client, job_id))
            await wait_processing(client, job_id)

            cancelling = await client.delete(f"{JOBS}/{job_id}")
            assert cancelling.status_code == 202, cancelling.text  # requested: its worker stops it
            assert cancelling.json()["status"] == "processing"

            seen = await asyncio.wait_for(followed, 120)
            assert seen[-1] == "cancelled" and "completed" not in seen
            job = (await client.get(f"{JOBS}/{job_id}")).json()
            assert job["status"] == "cancelled" and "result" not in job
            assert outputs(settings, job_id) == []
            wait_calls(hook, 1)
            assert event_types(hook) == ["job.cancelled"]
            # the worker goes on with other jobs
            after = (await submit(client, images.jpeg())).json()["jobId"]
            assert (await wait_finished(client, after))["status"] == "completed"


async def test_a_finished_job_cannot_be_cancelled_and_another_tenants_is_not_found(
    processes: Processes, settings: Settings
) -> None:
    _, base = processes.start_api(settings)
    processes.start_worker(settings)
    async with api_client(base, timeout=30) as admin:
        acme = await make_key(admin, "acme", READ, WRITE)
        globex = await make_key(admin, "globex", READ, WRITE)
        reader = await make_key(admin, "acme", READ)
    async with (
        api_client(base, key=acme, timeout=30) as client,
        api_client(base, key=globex, timeout=30) as other,
        api_client(base, key=reader, timeout=30) as read_only,
    ):
        job_id = (await submit(client, images.jpeg())).json()["jobId"]
        assert (await wait_finished(client, job_id))["status"] == "completed"

        finished = problem(await client.delete(f"{JOBS}/{job_id}"), 409)
        assert "completed" in finished["detail"]
        assert (await client.get(f"{JOBS}/{job_id}")).json()["status"] == "completed"

        problem(await other.delete(f"{JOBS}/{job_id}"), 404)
        problem(await other.delete(f"{JOBS}/no-such-job"), 404)
        problem(await read_only.delete(f"{JOBS}/{job_id}"), 403)
