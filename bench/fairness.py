"""Fair scheduling (issue 21): tenant B's small job against tenant A's 1,000 queued heavy jobs.

One stack on loopback (Redis, the MongoDB-wire server, the API, one worker of 2 slots), equal
weights. Heavy job: a 1200x1200 WebP of a 1200x1200 JPEG (moderately heavy, ~0.1 s of CPU), the same
for both tenants.

1. B's 100x100 thumbnail of that JPEG alone on the idle service, accepted to processed (median of
   ``--probes``).
2. The worker stopped, A queues ``--queued`` heavy jobs; the worker started again, B sends the same
   small job while A's jobs wait: its latency against idle is the ratio.
3. The worker stopped again, B queues ``--flood`` heavy jobs of its own; the worker started again,
   B's share of the worker is its part of the jobs finished from then to B's last one finished,
   while A still has hundreds waiting. The jobs being identical, a share of the jobs finished is a
   share of worker CPU (and of estimated cost, imgflow.core.cost).

The run ends with most of A's queue still waiting: the stack is stopped, not drained.

    uv run --frozen python -m bench.fairness [--queued 1000] [--flood 100] [--probes 9]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from imgflow.core.settings import Settings, StorageBackend
from imgflow.harness import images
from imgflow.harness.client import ADMIN_KEY, api_client, make_key, submit, wait_finished
from imgflow.harness.servers import Stack, free_port, start_stack, wait_for_port

SIDE = 1200
HEAVY = {"width": str(SIDE), "height": str(SIDE), "format": "webp"}
SUBMITTERS = 4  # uploads at once while queueing: the most one key may have under way


async def small_job_s(client: httpx.AsyncClient, photo: bytes) -> float:
    """Seconds from B's 100x100 job accepted to processed, by the job's own times (the client's
    polling every 0.1 s would add its own noise)."""
    reply = await submit(client, photo, user_id="probe")
    assert reply.status_code == 202, reply.text
    done = await wait_finished(client, reply.json()["jobId"], within=3600)
    assert done["status"] == "completed", done
    return (at(done["result"]["processedAt"]) - at(done["createdAt"])).total_seconds()


async def queue_heavy(client: httpx.AsyncClient, photo: bytes, count: int) -> list[dict[str, Any]]:
    """``count`` heavy jobs, sent ``SUBMITTERS`` at a time; their acceptances."""
    places = asyncio.Semaphore(SUBMITTERS)

    async def one() -> dict[str, Any]:
        async with places:
            reply = await submit(client, photo, user_id="flood", **HEAVY)
        assert reply.status_code == 202, reply.text
        accepted: dict[str, Any] = reply.json()
        return accepted

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def flood_jobs(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/image-processing/users/flood/jobs", params=params)).json()
        jobs += page["jobs"]
        cursor = page.get("nextCursor")
        if not cursor:
            return jobs


def at(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def share(a: list[dict[str, Any]], b: list[dict[str, Any]], start: datetime) -> tuple[float, int]:
    """B's part of the jobs finished from ``start`` (both tenants' jobs queued) to B's last one
    finished, and how many finished in that window."""
    done = {
        tenant: [at(job["result"]["processedAt"]) for job in jobs if job["status"] == "completed"]
        for tenant, jobs in (("a", a), ("b", b))
    }
    end = max(done["b"])
    served = {tenant: sum(1 for t in times if start <= t <= end) for tenant, times in done.items()}
    return served["b"] / (served["a"] + served["b"]), served["a"] + served["b"]


async def start_worker(stack: Stack) -> None:
    worker = stack.worker.start()
    await asyncio.to_thread(wait_for_port, stack.settings.worker_metrics_port, process=worker.process)


async def run(stack: Stack, workdir: Path, queued: int, flood: int, probes: int) -> dict[str, Any]:
    base = f"http://127.0.0.1:{stack.settings.api_port}"
    images.make_source("jpeg", SIDE, SIDE, workdir / "photo.jpg")
    photo = (workdir / "photo.jpg").read_bytes()
    async with api_client(base, timeout=120) as admin:
        keys = [
            await make_key(admin, t, "jobs:read", "jobs:write", create_per_s=1000, create_burst=1000)
            for t in "ab"
        ]
    async with (
        api_client(base, key=keys[0], timeout=120) as a,
        api_client(base, key=keys[1], timeout=120) as b,
    ):
        idle = [await small_job_s(b, photo) for _ in range(probes)]
        stack.worker.terminate()  # A's jobs wait, all of them, when B's first probe is sent
        started = time.perf_counter()
        await queue_heavy(a, photo, queued)
        queueing_s = time.perf_counter() - started
        await start_worker(stack)
        busy = [await small_job_s(b, photo) for _ in range(probes)]
        stack.worker.terminate()  # B's flood is queued whole before the share is counted
        await queue_heavy(b, photo, flood)
        both_waiting = datetime.now(UTC)
        await start_worker(stack)
        while True:
            b_jobs = await flood_jobs(b)
            if all(job["status"] in ("completed", "failed") for job in b_jobs):
                break
            await asyncio.sleep(1)
        a_jobs = await flood_jobs(a)
    b_share, window = share(a_jobs, b_jobs, both_waiting)
    waiting = sum(1 for job in a_jobs if job["status"] == "pending")
    return {
        "idle_s": idle,
        "busy_s": busy,
        "share": b_share,
        "window": window,
        "queued": queued,
        "queueing_s": queueing_s,
        "a_waiting_at_end": waiting,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queued", type=int, default=1000, help="A's heavy jobs queued")
    parser.add_argument("--flood", type=int, default=100, help="B's heavy jobs, for the share")
    parser.add_argument("--probes", type=int, default=9)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            api_port=free_port(),
            worker_metrics_port=free_port(),
            worker_concurrency=2,
            storage_backend=StorageBackend.local,
            storage_dir=Path(tmp) / "files",
            tenant_max_unfinished=100_000,
            admin_key=ADMIN_KEY,
            # B's probes send the same image each time: every one made by a worker, none reused
            reuse_disabled_tenants="*",
        )
        stack = start_stack(settings, Path(tmp))
        try:
            found = asyncio.run(run(stack, Path(tmp), args.queued, args.flood, args.probes))
        finally:
            stack.stop()
    idle, busy = statistics.median(found["idle_s"]), statistics.median(found["busy_s"])
    print(
        f"fairness: B's 100x100 job idle {idle * 1000:.0f} ms, with A's {found['queued']} heavy jobs "
        f"queued {busy * 1000:.0f} ms (medians of {len(found['idle_s'])}): ratio {busy / idle:.1f}"
    )
    print(
        f"  B's share of the worker while both wait: {found['share']:.2f} at equal weights "
        f"({found['window']} identical jobs finished; A still had {found['a_waiting_at_end']} waiting "
        f"at the end; queueing A's took {found['queueing_s']:.0f} s)"
    )


if __name__ == "__main__":
    main()
