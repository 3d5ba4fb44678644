"""Idempotency-Key when the API dies mid-request, on real servers: an API killed after recording a
job and before answering leaves the key pending; the client's retry with the same key and body is
answered that job (not a second one), which completes; while the first request is alive, a
duplicate still gets 409."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from redis.asyncio import Redis

from imgflow.core import quota
from imgflow.core.settings import Settings
from imgflow.core.store import connect
from imgflow.harness import images
from imgflow.harness.client import JOBS, api_client, make_key, wait_finished
from imgflow.harness.servers import free_port, redis_server, wait_for_port
from tests.conftest import Processes
from tests.test_auth import problem

READ, WRITE = "jobs:read", "jobs:write"
LISTING = "/api/image-processing/users/idem/jobs"


def _form(body: bytes, boundary: str) -> tuple[bytes, bytes]:
    """A multipart form with userId and the file, cut before the file's last bytes."""
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="userId"\r\n\r\nidem\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return head + body[:-10], body[-10:] + f"\r\n--{boundary}--\r\n".encode()


async def _send(client: httpx.AsyncClient, key: str, body: bytes) -> httpx.Response:
    files = {"file": ("a.jpg", body, "image/jpeg")}
    return await client.post(JOBS, files=files, data={"userId": "idem"}, headers={"Idempotency-Key": key})


async def _retry(client: httpx.AsyncClient, key: str, body: bytes) -> httpx.Response:
    """Send until the answer is no longer 409 (in progress), waiting its Retry-After each time."""
    for _ in range(300):
        reply = await _send(client, key, body)
        if reply.status_code != 409:
            return reply
        await asyncio.sleep(float(reply.headers["retry-after"]))
    raise AssertionError(f"still 409 after 300 tries: {reply.text}")


async def test_a_retry_after_the_api_died_before_answering_gets_the_recorded_job(
    processes: Processes, fresh_settings: Settings, tmp_path: Path
) -> None:
    port = free_port()
    redis_proc = redis_server(tmp_path / "redis", port).start()
    try:
        wait_for_port(port, process=redis_proc.process)
        settings = fresh_settings.model_copy(
            update={
                "redis_url": f"redis://127.0.0.1:{port}/0",
                # a short upload deadline and MongoDB time limit: the dead request's mark goes
                # stale within seconds; the reconciler publishes its job soon after
                "upload_idle_timeout_s": 1.0,
                "upload_min_bytes_per_s": 100_000_000,
                "mongodb_timeout_s": 3.0,
                "requeue_after_s": 1.0,
                "reconcile_interval_s": 0.5,
            }
        )
        await _die_and_retry(processes, settings, port, redis_proc.pid)
    finally:
        os.kill(redis_proc.pid, signal.SIGCONT)
        redis_proc.terminate()


async def _die_and_retry(processes: Processes, settings: Settings, redis_port: int, redis_pid: int) -> None:
    api, base = processes.start_api(settings)
    async with api_client(base, timeout=30) as admin:
        key = await make_key(admin, "idem-t", READ, WRITE, create_burst=100)
    data = images.jpeg(3000, 2000)
    redis = Redis.from_url(f"redis://127.0.0.1:{redis_port}/0")
    mongo = connect(settings)
    jobs = mongo[settings.mongodb_database]["jobs"]
    try:
        async with api_client(base, key=key, timeout=60) as client:
            first = asyncio.create_task(_send(client, "order-1", data))
            # the job's place among the tenant's unfinished ones is the API's last Redis write
            # before it stores the original and inserts the job: stop Redis there, so the API
            # blocks on the pipeline after the insert, and kill it once the record is in MongoDB
            while not await redis.zcard(quota.unfinished_key(settings, "idem-t")):
                assert not first.done(), "the request ended before it took a place"
            os.kill(redis_pid, signal.SIGSTOP)
            for _ in range(600):
                if await jobs.count_documents({"tenant": "idem-t"}):
                    break
                await asyncio.sleep(0.05)
            assert not first.done(), "the API answered before Redis was stopped"
            api.kill()
            os.kill(redis_pid, signal.SIGCONT)
            assert isinstance((await asyncio.gather(first, return_exceptions=True))[0], httpx.HTTPError)
            recorded = [doc["_id"] async for doc in jobs.find({"tenant": "idem-t"})]
            assert len(recorded) == 1

        _, base = processes.start_api(settings)
        processes.start_worker(settings)
        async with api_client(base, key=key, timeout=60) as client:
            # once the dead request's mark is stale: another body under the key is still refused
            problem(await _retry(client, "order-1", images.png_alpha()), 422)
            again = await _retry(client, "order-1", data)
            assert again.status_code == 202, again.text
            assert again.json()["jobId"] == recorded[0]
            assert again.headers["location"] == f"{JOBS}/{recorded[0]}"
            listed = (await client.get(LISTING, params={"limit": 100})).json()["jobs"]
            assert [j["jobId"] for j in listed] == recorded
            assert (await wait_finished(client, recorded[0]))["status"] == "completed"
            assert (await _send(client, "order-1", data)).json()["jobId"] == recorded[0]
            problem(await _send(client, "order-1", images.png_alpha()), 422)
            await _a_duplicate_of_a_live_request_gets_409(client, redis, settings, data)
    finally:
        await redis.aclose()
        await mongo.close()


async def _a_duplicate_of_a_live_request_gets_409(
    client: httpx.AsyncClient, redis: Redis, settings: Settings, data: bytes
) -> None:
    boundary = uuid.uuid4().hex
    start, end = _form(data, boundary)
    sent_start, release = asyncio.Event(), asyncio.Event()

    async def body() -> AsyncIterator[bytes]:
        yield start
        sent_start.set()
        await release.wait()
        yield end

    headers = {"Idempotency-Key": "order-2", "Content-Type": f"multipart/form-data; boundary={boundary}"}
    first = asyncio.create_task(client.post(JOBS, content=body(), headers=headers))
    await sent_start.wait()
    mark = f"{settings.stream}:idem:idem-t:{hashlib.sha256(b'order-2').hexdigest()}"
    while not await redis.exists(mark):  # the first request has claimed the key
        assert not first.done(), first.result().text
        await asyncio.sleep(0.01)
    duplicate = await _send(client, "order-2", data)
    assert problem(duplicate, 409)["title"] == "Request in progress"
    release.set()
    accepted = await first
    assert accepted.status_code == 202, accepted.text
    assert (await _send(client, "order-2", data)).json()["jobId"] == accepted.json()["jobId"]
