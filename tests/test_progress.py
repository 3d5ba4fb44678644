"""Live progress over Server-Sent Events: the job now, each change, the end when it is finished;
from any API replica, resumable with Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from imgflow.core.settings import Settings
from imgflow.harness import images
from imgflow.harness.client import JOBS, api_client, submit, wait_finished
from tests.conftest import Processes
from tests.sources import ImageSource, image_source
from tests.test_failures import submit_url_job


@dataclass
class Event:
    id: str
    name: str
    job: dict[str, Any]


async def events(response: httpx.Response) -> AsyncIterator[Event | None]:
    """Parse ``text/event-stream``: an Event per event, None per keep-alive comment."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield None
        elif not line:
            if fields:
                yield Event(fields.get("id", ""), fields.get("event", ""), json.loads(fields["data"]))
            fields = {}
        else:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


def entry_order(event_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in event_id.split("-"))


@pytest.fixture
def settings(fresh_settings: Settings) -> Settings:
    return fresh_settings.model_copy(update={"allow_private_urls": True})


async def wait_requested(source: ImageSource) -> None:
    async with asyncio.timeout(60):
        while not source.requests:  # noqa: ASYNC110 (the source counts in another thread)
            await asyncio.sleep(0.02)


async def test_a_client_follows_a_job_to_the_end_on_one_connection(
    processes: Processes, settings: Settings
) -> None:
    _, base = processes.start_api(settings)
    processes.start_worker(settings)
    with image_source(images.jpeg(), hold_first=1) as source:
        job_id = await submit_url_job(settings, source.url)
        seen: list[Event] = []
        async with (
            api_client(base, timeout=30) as client,
            client.stream("GET", f"{JOBS}/{job_id}/events") as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for event in events(response):
                if event is None:
                    continue
                seen.append(event)
                if event.job["status"] == "processing":
                    await wait_requested(source)
                    source.release.set()  # the worker may finish now
            # the loop ends because the server ended the stream
    statuses = [event.job["status"] for event in seen]
    assert statuses[-1] == "completed" and "processing" in statuses, statuses
    assert all(event.name == "status" and event.job["jobId"] == job_id for event in seen)
    assert seen[-1].job["result"]["thumbnailUrl"].endswith(".jpg")


async def test_another_replica_resumes_after_the_last_event_seen(
    processes: Processes, settings: Settings
) -> None:
    _, accepting = processes.start_api(settings)
    _, following = processes.start_api(settings)
    processes.start_worker(settings)
    with image_source(images.jpeg(), hold_first=1) as source:
        async with api_client(accepting, timeout=30) as client:
            job_id = (await submit(client, images.jpeg(), user_id="progress")).json()["jobId"]
            url_job = await submit_url_job(settings, source.url)
        async with api_client(following, timeout=30) as client:
            async with client.stream("GET", f"{JOBS}/{url_job}/events") as response:
                first = await anext(e async for e in events(response) if e is not None)
            assert first.job["status"] in ("pending", "processing")
            await wait_requested(source)
            source.release.set()
            await wait_finished(client, url_job)
            resumed = []
            headers = {"Last-Event-ID": first.id}
            async with client.stream("GET", f"{JOBS}/{url_job}/events", headers=headers) as response:
                resumed = [e async for e in events(response) if e is not None]
            assert resumed and resumed[-1].job["status"] == "completed"
            assert all(entry_order(e.id) > entry_order(first.id) for e in resumed)
            # an upload accepted by the other replica is followed here too
            async with client.stream("GET", f"{JOBS}/{job_id}/events") as response:
                last = [e async for e in events(response) if e is not None][-1]
            assert last.job["status"] == "completed"


async def test_an_unknown_job_is_a_404_problem(processes: Processes, settings: Settings) -> None:
    _, base = processes.start_api(settings)
    async with api_client(base, timeout=30) as client:
        response = await client.get(f"{JOBS}/no-such-job/events")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_stopping_replica_ends_its_streams_and_the_client_resumes_on_another(
    processes: Processes, settings: Settings
) -> None:
    # A rolling upgrade: the replica a client follows from is told to stop (SIGTERM, as the kubelet
    # does after the pod's preStop). Its stream ends cleanly at once rather than being cut when the
    # graceful shutdown runs out, and the client resumes on another replica.
    stopping, base = processes.start_api(settings)
    _, other = processes.start_api(settings)
    async with api_client(base, timeout=60) as client:
        job_id = (await submit(client, images.jpeg(), user_id="stopping")).json()["jobId"]
        async with client.stream("GET", f"{JOBS}/{job_id}/events") as response:
            seen = []
            async for event in events(response):
                if event is None:
                    continue
                seen.append(event)
                os.kill(stopping.pid, signal.SIGTERM)  # no worker yet: the job waits
            # the loop ends because the server ended the stream (a cut one raises here)
    assert [event.job["status"] for event in seen] == ["pending"]
    assert stopping.wait_exit(60) and stopping.terminate() == 0
    processes.start_worker(settings)
    async with (
        api_client(other, timeout=60) as client,
        client.stream("GET", f"{JOBS}/{job_id}/events", headers={"Last-Event-ID": seen[0].id}) as response,
    ):
        resumed = [e async for e in events(response) if e is not None]
    assert resumed[-1].job["status"] == "completed"
    assert all(entry_order(e.id) > entry_order(seen[0].id) for e in resumed)
