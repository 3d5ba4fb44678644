"""The fault run: jobs through the whole stack while workers are SIGKILLed and Redis and the
MongoDB-wire server restart. What counts is that nothing accepted is lost or stuck, and that no
healthy image is failed.

Starts Redis, the MongoDB-wire server, the API and ``--workers`` worker processes on loopback
(local storage), submits ``--jobs`` small photos over HTTP from 4 clients, and meanwhile every
``--kill-every`` seconds SIGKILLs a random worker and starts a new one; early on it restarts Redis
(its append-only file keeps the queue). It crashes the MongoDB-wire server twice (SIGKILL of every
process of it, FerretDB's PostgreSQL included) and starts it again on its data: once within a
millisecond of a random 202, once at a random moment. Then it waits up to ``--drain`` seconds for
every accepted job to finish and prints: accepted (202), refused (503 while a server was down: the
client was told, nothing was kept), completed, failed by reason, lost (accepted but without a record
in the database at the end: read there, since the API's snapshots in Redis would answer for a lost
one), not listed (accepted but absent from the user's listing), stuck (unfinished at the end),
the drain time, the database crashes, how many jobs workers restored from their message (a record
the database lost), and histograms of attempts and of crashes blamed on a job.

    uv run --frozen python -m bench.studies.faults [--jobs 1500] [--workers 3] [--kill-every 5] [--drain 300]

tests/test_fault_run.py runs a short one; tests/test_durability.py uses its crash helpers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pymongo

from imgflow.core.settings import Settings, StorageBackend
from imgflow.harness import images
from imgflow.harness.servers import (
    Server,
    crash_mongodb,
    free_port,
    start_stack,
    wait_for_port,
    worker_server,
)


async def submit_all(
    base: str, key: str, jobs: int, clients: int = 4, on_accepted: Callable[[int], bool] | None = None
) -> tuple[list[str], int]:
    """Submit ``jobs`` photos; the ids accepted, and how many were refused with 503.
    ``on_accepted(n)`` is called right after the n-th 202, before anything else runs (it may crash
    a server there); when it returns False, no further photo is sent."""
    photos = [images.jpeg(w, h) for w, h in ((320, 240), (640, 480), (1024, 768))]
    accepted: list[str] = []
    refused = 0
    todo = list(range(jobs))

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal refused
        while todo:
            n = todo.pop()
            try:
                response = await client.post(
                    "/api/image-processing/jobs",
                    files={"file": ("p.jpg", photos[n % len(photos)], "image/jpeg")},
                    data={"userId": "faults"},
                )
            except httpx.TransportError:
                refused += 1
                continue
            if response.status_code == 202:
                accepted.append(response.json()["jobId"])
                if on_accepted is not None and not on_accepted(len(accepted)):
                    todo.clear()
            elif response.status_code == 503:
                refused += 1
            else:
                raise RuntimeError(f"unexpected {response.status_code}: {response.text}")

    async with httpx.AsyncClient(
        base_url=base, timeout=60, headers={"Authorization": f"Bearer {key}"}
    ) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
    return accepted, refused


async def accept_then_crash(base: str, key: str, burst: int, crash: Callable[[], None]) -> list[str]:
    """Submit photos from 4 clients until ``burst`` are accepted, then call ``crash`` at once
    (within a millisecond of that 202); the ids accepted, those answered after the crash included."""

    def crash_at_burst(n: int) -> bool:
        if n == burst:
            crash()
        return n < burst

    accepted, _ = await submit_all(base, key, burst * 4, on_accepted=crash_at_burst)
    return accepted


async def listed(client: httpx.AsyncClient, user_id: str) -> set[str]:
    """Every job id the API lists for the user (read from the database, not from snapshots),
    retrying while it answers 503 (the database just restarted) as a client would."""
    ids: set[str] = set()
    params = {"limit": "100"}
    while True:
        for _ in range(120):
            reply = await client.get(f"/api/image-processing/users/{user_id}/jobs", params=params)
            if reply.status_code != 503:
                break
            await asyncio.sleep(0.5)
        assert reply.status_code == 200, reply.text
        page = reply.json()
        ids.update(job["jobId"] for job in page["jobs"])
        if not page.get("nextCursor"):
            return ids
        params["cursor"] = page["nextCursor"]


def missing(mongodb_url: str, database: str, job_ids: list[str]) -> set[str]:
    """Which of these jobs have no record in the database (read there, not through the API, whose
    snapshots in Redis would still answer for a lost record)."""
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongodb_url)
    try:
        found = {d["_id"] for d in client[database]["jobs"].find({"_id": {"$in": job_ids}}, {"_id": 1})}
    finally:
        client.close()
    return set(job_ids) - found


def restart(server: Server, port: int) -> None:
    server.terminate()
    server.start()
    wait_for_port(port, process=server.process)


async def run(jobs: int, workers: int, kill_every: float, drain: float, workdir: Path) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    settings = Settings.model_validate(
        {
            "mongodb_database": f"imgflow_faults_{tag}",
            "stream": f"imgflow:faults:{tag}",
            "consumer_group": f"faults-{tag}",
            "storage_backend": StorageBackend.local,
            "storage_dir": workdir / "storage",
            "api_port": free_port(),
            "worker_metrics_port": free_port(),
            "claim_idle_ms": 5000,
            "requeue_after_s": 30.0,
        }
    )
    stack = start_stack(settings, workdir, logs=workdir / "logs")
    settings = stack.settings
    fleet = [stack.worker]

    def new_worker() -> Server:
        env = {"IMGFLOW_WORKER_METRICS_PORT": "0"}
        return worker_server(settings, workdir / "logs" / f"worker-{uuid.uuid4().hex[:6]}.log", env).start()

    fleet += [new_worker() for _ in range(workers - 1)]
    kills = 0
    mongo_port = int(stack.mongo.url.rsplit(":", 1)[1].strip("/"))
    crashes: list[str] = []
    crashed = asyncio.Event()

    def crash_database(when: str) -> None:
        if stack.mongo.server is not None:
            crash_mongodb(stack.mongo, workdir / "mongo")
            crashes.append(when)
            crashed.set()

    # once within a millisecond of a 202 (what a write the database acknowledged but had not made
    # durable would lose), once at a random moment
    after_202 = random.randrange(jobs // 2, jobs * 3 // 4)

    def on_accepted(n: int) -> bool:
        if n == after_202:
            crash_database(f"right after 202 #{n}")
        return True

    try:
        submitting = asyncio.create_task(
            submit_all(
                f"http://127.0.0.1:{settings.api_port}",
                settings.admin_key or "",
                jobs,
                on_accepted=on_accepted,
            )
        )
        started = time.monotonic()
        restarted: set[str] = set()
        while not submitting.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(crashed.wait(), kill_every)
            if crashed.is_set():
                crashed.clear()
                assert stack.mongo.server is not None
                await asyncio.to_thread(restart, stack.mongo.server, mongo_port)
            victim = random.choice(fleet)
            victim.kill()
            fleet.remove(victim)
            fleet.append(new_worker())
            kills += 1
            elapsed = time.monotonic() - started
            if "redis" not in restarted and elapsed > kill_every * 2:
                restarted.add("redis")
                await asyncio.to_thread(
                    restart, stack.redis, int(settings.redis_url.rsplit(":", 1)[1].split("/")[0])
                )
            elif "mongo" not in restarted and elapsed > kill_every * 4:
                restarted.add("mongo")
                await asyncio.sleep(random.uniform(0, kill_every))
                crash_database(f"at {time.monotonic() - started:.1f} s")
        accepted, refused = await submitting
        if crashed.is_set():  # crashed after the loop's last look
            assert stack.mongo.server is not None
            await asyncio.to_thread(restart, stack.mongo.server, mongo_port)
        submitted_at = time.monotonic()
        mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(stack.mongo.url)
        collection = mongo[settings.mongodb_database]["jobs"]
        while True:
            unfinished = collection.count_documents({"status": {"$in": ["pending", "processing"]}})
            if unfinished == 0 or time.monotonic() - submitted_at > drain:
                break
            await asyncio.sleep(1)
        drain_s = time.monotonic() - submitted_at
        docs = {d["_id"]: d for d in collection.find({"_id": {"$in": accepted}})}
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{settings.api_port}",
            timeout=60,
            headers={"Authorization": f"Bearer {settings.admin_key}"},
        ) as client:
            unlisted = set(accepted) - await listed(client, "faults")
    finally:
        for worker in fleet:
            worker.terminate()
        stack.stop()
    statuses = collections.Counter(d["status"] for d in docs.values())
    return {
        "jobs submitted": jobs,
        "accepted": len(accepted),
        "refused (503)": refused,
        "completed": statuses["completed"],
        "failed by reason": dict(
            collections.Counter(d["error"][:80] for d in docs.values() if d["status"] == "failed")
        ),
        "lost": len(set(accepted) - set(docs)),
        "not listed": len(unlisted),
        "stuck": statuses["pending"] + statuses["processing"],
        "drain s": round(drain_s, 1),
        "workers killed": kills,
        "database crashes": crashes,
        "restored by workers": sum(
            log.read_text(errors="replace").count("restored from its message")
            for log in (workdir / "logs").glob("worker*.log")
        ),
        "attempts": dict(sorted(collections.Counter(d.get("attempts", 0) for d in docs.values()).items())),
        "crashes blamed": dict(
            sorted(collections.Counter(d.get("crashes", 0) for d in docs.values()).items())
        ),
        "given back": sum(d.get("given_back", 0) for d in docs.values()),
    }
