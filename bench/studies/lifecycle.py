"""The job lifecycle at volume: webhook latency, requeue entries per job, storage after retention.

Starts Redis, the MongoDB-wire server, the API and one worker on loopback (local storage,
``IMGFLOW_RETENTION_S`` short), plus a webhook receiver on loopback. ``--jobs`` small JPEGs are
submitted by 8 clients with a ``callbackUrl``; each client follows its job on Server-Sent Events.
Prints: throughput; webhook delivery latency after the job finished (receiver clock minus
``result.processedAt``, same machine); stream entries published per job (1.0 = no requeue
duplicates); stored bytes at the end of the run and after the retention has passed, with the
jobs left in MongoDB.

    uv run --frozen python -m bench.studies.lifecycle [--jobs 10000] [--retention 20]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import pymongo
from redis.asyncio import Redis

from bench.e2e import follow, percentile
from imgflow.core.settings import Settings, StorageBackend
from imgflow.harness import images
from imgflow.harness.receivers import Receiver, receiver
from imgflow.harness.servers import free_port, start_stack

JOBS = "/api/image-processing/jobs"


def stored_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.iterdir() if p.is_file())


async def run(jobs: int, retention: float, workdir: Path) -> None:
    with receiver() as hook:
        await _run(jobs, retention, workdir, hook)


async def _run(jobs: int, retention: float, workdir: Path, hook: Receiver) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = Settings.model_validate(
        {
            "mongodb_database": f"imgflow_lifecycle_{tag}",
            "stream": f"imgflow:lifecycle:{tag}",
            "storage_backend": StorageBackend.local,
            "storage_dir": workdir / "storage",
            "api_port": free_port(),
            "worker_metrics_port": free_port(),
            "retention_s": retention,
            "reconcile_interval_s": 1.0,
            "allow_private_urls": True,  # the receiver is on loopback
            "webhook_secret": "whsec_" + base64.b64encode(os.urandom(24)).decode(),
        }
    )
    stack = start_stack(settings, workdir)
    settings = stack.settings
    data = images.jpeg(320, 240)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(jobs):
        queue.put_nowait(n)
    try:
        peak = 0

        async def watch_storage() -> None:
            nonlocal peak
            while True:
                peak = max(peak, stored_bytes(settings.storage_dir))
                await asyncio.sleep(1)

        watcher = asyncio.create_task(watch_storage())
        started = time.time()
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{settings.api_port}",
            timeout=120,
            headers={"Authorization": f"Bearer {settings.admin_key}"},
        ) as client:

            async def client_loop() -> None:
                while not queue.empty():
                    queue.get_nowait()
                    response = await client.post(
                        JOBS,
                        files={"file": ("a.jpg", data, "image/jpeg")},
                        data={"userId": "lifecycle", "callbackUrl": hook.url},
                    )
                    response.raise_for_status()
                    await follow(client, response.json()["jobId"])

            await asyncio.gather(*(client_loop() for _ in range(8)))
        elapsed = time.time() - started
        deadline = time.time() + 120
        while len(hook.calls) < jobs and time.time() < deadline:  # noqa: ASYNC110 (another thread)
            await asyncio.sleep(0.2)
        watcher.cancel()
        redis = Redis.from_url(settings.redis_url)
        entries = int((await redis.xinfo_stream(settings.stream))["entries-added"])
        await redis.aclose()
        await asyncio.sleep(retention + 10)  # past the retention, and a few sweeps
        after = stored_bytes(settings.storage_dir)
        client_db: pymongo.MongoClient[dict[str, object]] = pymongo.MongoClient(stack.mongo.url)
        left = client_db[settings.mongodb_database]["jobs"].count_documents({})
        client_db.close()
        latency = [
            1000 * (arrived - _ts(str(payload["data"]["result"]["processedAt"])))
            for arrived, payload in zip(
                hook.arrived_at, (json.loads(body) for _, body in hook.calls), strict=False
            )
        ]
        print(f"{jobs} jobs through {stack.mongo.kind}, 8 clients following Server-Sent Events:")
        print(f"  throughput                   {jobs / elapsed:.1f} jobs/s")
        print(f"  webhooks received            {len(hook.calls)} of {jobs}")
        p50, p95 = percentile(latency, 50), percentile(latency, 95)
        print(f"  webhook after completion     p50 {p50:.0f} ms, p95 {p95:.0f} ms")
        print(f"  stream entries per job       {entries / jobs:.3f}")
        print(f"  stored at most, during run   {peak / 1e6:.1f} MB")
        print(f"  stored {retention:g} s + 10 s later   {after / 1e6:.2f} MB, {left} job(s) left in MongoDB")
    finally:
        stack.stop()


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--retention", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgflow-lifecycle-") as tmp:
        asyncio.run(run(args.jobs, args.retention, Path(tmp)))


if __name__ == "__main__":
    main()
