"""What one client's reads may cost a replica, against real servers: clients that ask for a large
thumbnail and never read it hold no storage connection (another tenant's uploads and reads go on),
and a listing costs one database query whatever page it names."""

from __future__ import annotations

import asyncio
import os
import socket
from collections import Counter
from datetime import timedelta

import httpx
import pytest

from imgflow.core.jobs import Job, JobResult, JobStatus, UploadSource, thumbnail_key, utcnow
from imgflow.core.outputs import OutputFormat
from imgflow.core.settings import Settings
from imgflow.core.storage import make_storage
from imgflow.core.store import connect
from imgflow.harness import images
from imgflow.harness.client import api_client, make_key, submit
from imgflow.harness.ops import mongo_commands
from imgflow.harness.servers import S3Server
from tests.conftest import Processes, on_s3

LARGE = 24 * 1024 * 1024  # far more than the socket buffers between a client and the API hold
SLOW_READERS = 16  # more than an S3 client's connection pool (aiobotocore: 10)


async def completed_job(settings: Settings, tenant: str, data: bytes) -> str:
    """A completed job of ``tenant`` whose thumbnail (a PNG) is ``data``, put straight into the
    database and the storage the API reads."""
    mongo = connect(settings)
    db = mongo[settings.mongodb_database]
    storage = make_storage(settings, db)
    try:
        job = Job(user_id="reader", tenant=tenant, source=UploadSource(key="original-none"))
        key = thumbnail_key(job.job_id, OutputFormat.png)
        await storage.save_bytes(key, data, "image/png")
        job.status = JobStatus.completed
        job.result = JobResult(
            key=key, width=64, height=64, bytes=len(data), format=OutputFormat.png, processed_at=utcnow()
        )
        await db["jobs"].insert_one(job.to_document())
        return key
    finally:
        await storage.aclose()
        await mongo.close()


def never_reading(port: int, key: str, name: str) -> socket.socket:
    """A connection that asks for ``name`` and then reads nothing (a small receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(
        f"GET /uploads/{name} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {key}\r\n\r\n".encode()
    )
    return sock


def drain(sock: socket.socket) -> int:
    """Every byte the server still sends, until it closes the connection."""
    sock.settimeout(30)
    received = 0
    try:
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    except ConnectionResetError:
        pass
    return received


# the thumbnail read in pieces (over the memory bound), or read whole and sent from memory
@pytest.mark.parametrize("memory_bytes", [8 * 1024 * 1024, 2 * LARGE], ids=["pieces", "memory"])
async def test_clients_that_never_read_a_large_thumbnail_hold_no_storage_connection(
    processes: Processes, fresh_settings: Settings, s3: S3Server, memory_bytes: int
) -> None:
    deadline_s = 8.0
    settings = on_s3(
        fresh_settings,
        s3,
        reconcile_interval_s=3600,
        download_deadline_s=deadline_s,
        download_memory_bytes=memory_bytes,
        max_downloads_per_key=SLOW_READERS,  # all of them on their way, more than S3's pool
    )
    _, base = processes.start_api(settings)
    port = int(base.rsplit(":", 1)[1])
    large = await completed_job(settings, "hoarder", os.urandom(LARGE))
    small_bytes = images.png_alpha(64, 64)
    small = await completed_job(settings, "victim", small_bytes)
    async with api_client(base, timeout=30) as admin:
        hoarder_key = await make_key(admin, "hoarder", "jobs:read")
        victim_key = await make_key(admin, "victim", "jobs:read", "jobs:write")

    slow = [never_reading(port, hoarder_key, large) for _ in range(SLOW_READERS)]
    try:
        await asyncio.sleep(1.0)  # each has its answer under way
        # another tenant's uploads and reads answer (no timeout, no 5xx) while they hang on
        async with api_client(base, key=victim_key, timeout=httpx.Timeout(20.0)) as victim:
            for _ in range(3):
                accepted = await submit(victim, images.jpeg(64, 64))
                assert accepted.status_code == 202, accepted.text
                thumb = await victim.get(f"/uploads/{small}")
                assert thumb.status_code == 200, thumb.text
                assert thumb.content == small_bytes

        # a client that does not take the thumbnail within the deadline is cut off (and what the
        # server held for it is let go)
        await asyncio.sleep(deadline_s)
        received = await asyncio.gather(*(asyncio.to_thread(drain, sock) for sock in slow))
        assert all(n < LARGE for n in received), received
    finally:
        for sock in slow:
            sock.close()

    # one that reads gets every byte, through the pieces it is read in
    async with api_client(base, key=hoarder_key, timeout=30) as reader:
        whole = await reader.get(f"/uploads/{large}")
        assert whole.status_code == 200
        assert len(whole.content) == LARGE


async def test_downloads_are_capped_per_key_and_per_replica(
    processes: Processes, fresh_settings: Settings
) -> None:
    """What readers that never read can hold of a replica's memory is bounded: a key gets
    ``max_downloads_per_key`` thumbnails at once, the process ``max_concurrent_downloads``."""
    settings = fresh_settings.model_copy(
        update={"reconcile_interval_s": 3600, "max_downloads_per_key": 3, "max_concurrent_downloads": 5}
    )
    _, base = processes.start_api(settings)
    port = int(base.rsplit(":", 1)[1])
    held = await completed_job(settings, "hoarder", os.urandom(4 * 1024 * 1024))  # sent from memory
    small_bytes = images.png_alpha(64, 64)
    small = await completed_job(settings, "victim", small_bytes)
    own = await completed_job(settings, "hoarder", small_bytes)
    async with api_client(base, timeout=30) as admin:
        hoarders = [await make_key(admin, "hoarder", "jobs:read") for _ in range(2)]
        victim_key = await make_key(admin, "victim", "jobs:read")

    async def fetch(key: str, name: str) -> httpx.Response:
        async with api_client(base, key=key, timeout=20) as client:
            return await client.get(f"/uploads/{name}")

    slow = [never_reading(port, hoarders[0], held) for _ in range(3)]
    try:
        await asyncio.sleep(1.0)  # each has its answer under way
        refused = await fetch(hoarders[0], own)
        assert refused.status_code == 429, refused.text
        assert "3 downloads" in refused.json()["detail"] and int(refused.headers["retry-after"]) >= 1
        # another tenant reads on; another key too, up to the replica's places
        assert (await fetch(victim_key, small)).content == small_bytes
        slow += [never_reading(port, hoarders[1], held) for _ in range(2)]
        await asyncio.sleep(1.0)
        full = await fetch(victim_key, small)
        assert full.status_code == 503 and int(full.headers["retry-after"]) >= 1, full.text
    finally:
        for sock in slow:
            sock.close()
    # the places come back when the readers go
    for _ in range(100):
        answer = await fetch(hoarders[0], own)
        if answer.status_code != 429:
            break
        await asyncio.sleep(0.2)
    assert answer.status_code == 200 and answer.content == small_bytes


USER = "deep-lister"
JOB_COUNT = 3000


async def many_jobs(settings: Settings, count: int) -> list[str]:
    """``count`` finished jobs of one user, inserted at once; their ids newest first."""
    mongo = connect(settings)
    try:
        start = utcnow()
        jobs = [
            Job(
                user_id=USER,
                source=UploadSource(key="original-none"),
                status=JobStatus.failed,
                error="made by the test",
                created_at=start - timedelta(milliseconds=i),
            )
            for i in range(count)
        ]
        await mongo[settings.mongodb_database]["jobs"].insert_many([job.to_document() for job in jobs])
        return [job.job_id for job in jobs]
    finally:
        await mongo.close()


async def mongodb_commands(client: httpx.AsyncClient) -> Counter[str]:
    return await mongo_commands([str(client.base_url.join("/metrics"))])


async def test_numbered_pages_cost_one_query_and_stop_at_the_bound(
    processes: Processes, fresh_settings: Settings
) -> None:
    # no reconciler round during the test: only the listings below may touch MongoDB
    settings = fresh_settings.model_copy(update={"reconcile_interval_s": 3600})
    newest_first = await many_jobs(settings, JOB_COUNT)
    _, base = processes.start_api(settings)
    listing = f"/api/image-processing/users/{USER}/jobs"
    async with api_client(base, timeout=60) as client:
        for page in (1000, 12):  # 99,900 and 1,100 jobs deep: past the bound of 1,000
            deep = await client.get(listing, params={"page": page, "limit": 100})
            assert deep.status_code == 400, deep.text[:300]
            assert deep.headers["content-type"] == "application/problem+json"
            assert "cursor" in deep.json()["detail"]

        before = await mongodb_commands(client)
        deepest = await client.get(listing, params={"page": 11, "limit": 100})  # 1,000 deep
        assert deepest.status_code == 200, deepest.text[:300]
        assert [job["jobId"] for job in deepest.json()["jobs"]] == newest_first[1000:1100]
        spent = await mongodb_commands(client) - before
        spent.pop("killCursors", None)  # FerretDB leaves the cursor open; closing it reads nothing
        assert spent == Counter({"find": 1})

        # its cursor goes on from there
        after = await client.get(listing, params={"cursor": deepest.json()["nextCursor"], "limit": 100})
        assert [job["jobId"] for job in after.json()["jobs"]] == newest_first[1100:1200]


async def test_a_query_past_the_mongodb_time_limit_answers_503(
    processes: Processes, fresh_settings: Settings
) -> None:
    await many_jobs(fresh_settings, JOB_COUNT)
    # far less than a query over thousands of jobs takes
    settings = fresh_settings.model_copy(update={"reconcile_interval_s": 3600, "mongodb_timeout_s": 0.001})
    _, base = processes.start_api(settings)
    async with api_client(base, timeout=60) as client:
        listed = await client.get(f"/api/image-processing/users/{USER}/jobs", params={"limit": 100})
        assert listed.status_code == 503, listed.text[:300]
        assert listed.headers["retry-after"]
        assert "time limit" in listed.json()["detail"]
        # (a read of one job by id may finish within 1 ms: only the listing is sure to pass the limit)
