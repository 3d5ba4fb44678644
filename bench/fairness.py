"""Fair scheduling (issue 21): tenant B's small job against tenant A's flood of heavy jobs.

One stack on loopback (Redis, the MongoDB-wire server, the API, one worker). First tenant B's
100x100 thumbnail alone, on the idle service; then tenant A queues ``--heavy`` heavy jobs (a
1000x1000 WebP each) and B, while they wait, sends the same small job again, then a flood of its
own of the same heavy jobs. Reported: B's small-job latency under A's flood against idle (the
ratio, medians of ``--probes``), and B's share of the work served while both had jobs waiting (its
jobs' estimated cost, imgflow.core.cost, over everyone's, between B's first heavy job finished and
the first tenant running out), at equal weights.

    uv run --frozen python -m bench.fairness [--heavy 120] [--probes 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from imgflow.core.settings import Settings, StorageBackend
from imgflow.harness import images
from imgflow.harness.client import ADMIN_KEY, api_client, make_key, submit, wait_finished
from imgflow.harness.servers import free_port, start_stack

HEAVY = {"width": "1000", "height": "1000", "format": "webp"}


async def small_job_s(client: httpx.AsyncClient, photo: bytes) -> float:
    """Seconds from sending B's 100x100 job to seeing it completed."""
    start = time.perf_counter()
    reply = await submit(client, photo, user_id="probe")
    assert reply.status_code == 202, reply.text
    done = await wait_finished(client, reply.json()["jobId"], within=3600)
    assert done["status"] == "completed", done
    return time.perf_counter() - start


async def flood(client: httpx.AsyncClient, photo: bytes, count: int, user_id: str) -> list[str]:
    replies = [await submit(client, photo, user_id=user_id, **HEAVY) for _ in range(count)]
    assert all(r.status_code == 202 for r in replies), replies[-1].text
    return [r.json()["jobId"] for r in replies]


async def finished(client: httpx.AsyncClient, user_id: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 100, **({"cursor": cursor} if cursor else {})}
        page = (await client.get(f"/api/image-processing/users/{user_id}/jobs", params=params)).json()
        jobs += page["jobs"]
        cursor = page.get("nextCursor")
        if not cursor:
            return jobs


async def run(base: str, heavy: int, probes: int) -> dict[str, Any]:
    photo = images.jpeg(1500, 1000)
    async with api_client(base, timeout=60) as admin:
        keys = [
            await make_key(admin, t, "jobs:read", "jobs:write", create_per_s=1000, create_burst=1000)
            for t in "ab"
        ]
    async with api_client(base, key=keys[0], timeout=60) as a, api_client(base, key=keys[1], timeout=60) as b:
        idle = [await small_job_s(b, photo) for _ in range(probes)]
        await flood(a, photo, heavy, "flood")
        busy = [await small_job_s(b, photo) for _ in range(probes)]
        await flood(b, photo, heavy // 2, "flood")
        while True:
            await asyncio.sleep(2)
            jobs = {"a": await finished(a, "flood"), "b": await finished(b, "flood")}
            if all(job["status"] in ("completed", "failed") for listed in jobs.values() for job in listed):
                break
    return {"idle_s": idle, "busy_s": busy, "share": share(jobs), "heavy": heavy}


def share(by_tenant: dict[str, list[dict[str, Any]]]) -> float:
    """B's part of the cost served while both tenants had heavy jobs waiting: from B's first heavy
    job finished to the first tenant's last."""
    done = {
        tenant: sorted(
            (job["result"]["processedAt"], job["cost"]) for job in jobs if job["status"] == "completed"
        )
        for tenant, jobs in by_tenant.items()
    }
    start, end = done["b"][0][0], min(finished[-1][0] for finished in done.values())
    served = {tenant: sum(c for at, c in finished if start <= at <= end) for tenant, finished in done.items()}
    return float(served["b"] / (served["a"] + served["b"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--heavy", type=int, default=120)
    parser.add_argument("--probes", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            api_port=free_port(),
            worker_metrics_port=free_port(),
            storage_backend=StorageBackend.local,
            storage_dir=Path(tmp) / "files",
            tenant_max_unfinished=100_000,
            admin_key=ADMIN_KEY,
        )
        stack = start_stack(settings, Path(tmp))
        try:
            found = asyncio.run(run(f"http://127.0.0.1:{settings.api_port}", args.heavy, args.probes))
        finally:
            stack.stop()
    idle, busy = statistics.median(found["idle_s"]), statistics.median(found["busy_s"])
    heavy = found["heavy"]
    print(
        f"fairness: B's 100x100 idle {idle * 1000:.0f} ms, with A's {heavy} heavy jobs {busy * 1000:.0f} ms"
    )
    print(f"  ratio {busy / idle:.1f}; B's share of the cost served while both wait {found['share']:.2f}")


if __name__ == "__main__":
    main()
