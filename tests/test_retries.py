"""Failures that may pass are retried with backoff; after the last retry the job fails and is filed
as a dead letter, which an operator can list and send back. Permanent failures fail at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import httpx
import pytest

from imgflow.core.settings import Settings
from imgflow.harness import images
from imgflow.harness.client import JOBS, api_client, wait_finished
from tests.conftest import Processes
from tests.sources import image_source
from tests.test_failures import submit_url_job


@pytest.fixture
def settings(fresh_settings: Settings) -> Settings:
    return fresh_settings.model_copy(update={"allow_private_urls": True, "retry_delays_s": "0.5,1"})


@pytest.fixture
async def client(processes: Processes, settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    _, base = processes.start_api(settings)
    processes.start_worker(settings)
    async with api_client(base, timeout=30) as c:
        yield c


async def views_until_finished(client: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    """Every view of the job a client polling every 50 ms sees, up to the finished one."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(60):
        while True:
            view = (await client.get(f"{JOBS}/{job_id}")).json()
            seen.append(view)
            if view["status"] in ("completed", "failed"):
                return seen
            await asyncio.sleep(0.05)


async def test_a_source_answering_503_twice_is_retried_with_backoff(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    with image_source(images.jpeg(), fail_first=2, fail_status=503) as source:
        job_id = await submit_url_job(settings, source.url)
        seen = await views_until_finished(client, job_id)
    final = seen[-1]
    assert final["status"] == "completed", final
    assert final["attempts"] == 3 and source.requests == 3
    waiting = [view for view in seen if view.get("nextAttemptAt")]
    assert waiting, "a client never saw the job waiting for its retry"
    assert "503" in waiting[0]["error"] and waiting[0]["status"] == "pending"
    assert datetime.fromisoformat(waiting[0]["nextAttemptAt"]) > datetime.fromisoformat(
        waiting[0]["updatedAt"]
    )
    assert final.get("nextAttemptAt") is None


async def test_after_the_last_retry_the_job_is_a_dead_letter_an_operator_can_send_back(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    with image_source(images.jpeg(), fail_first=3, fail_status=502) as source:
        job_id = await submit_url_job(settings, source.url)
        failed = await wait_finished(client, job_id)
        assert failed["status"] == "failed"
        assert failed["error"].startswith("Gave up after 3 tries:") and "502" in failed["error"]
        assert source.requests == 3  # the first try and two retries ("0.5,1")

        letters = (await client.get("/api/admin/dead-letters")).json()["deadLetters"]
        assert [letter["jobId"] for letter in letters] == [job_id]
        assert "502" in letters[0]["error"]

        # the source works now: the operator sends the job back
        response = await client.post(f"/api/admin/dead-letters/{job_id}/retry")
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "pending"
        done = await wait_finished(client, job_id)
    assert done["status"] == "completed", done
    assert (await client.get("/api/admin/dead-letters")).json()["deadLetters"] == []
    again = await client.post(f"/api/admin/dead-letters/{job_id}/retry")
    assert again.status_code == 404


async def test_a_permanent_failure_is_not_retried(settings: Settings, client: httpx.AsyncClient) -> None:
    with image_source(images.jpeg(), fail_first=1, fail_status=404) as source:
        job_id = await submit_url_job(settings, source.url)
        failed = await wait_finished(client, job_id)
    assert failed["status"] == "failed" and "404" in failed["error"]
    assert source.requests == 1 and failed["attempts"] == 1
    assert (await client.get("/api/admin/dead-letters")).json()["deadLetters"] == []
