"""How fast the reconciler refills a Redis that lost its data (issue target: >= 500 jobs/s).

Starts Redis, the MongoDB-wire server and the API on loopback (no worker), submits ``--jobs``
jobs through the path the API and the operator share, then FLUSHALL: every message, the consumer
group and the entry records are gone. Measures how long until every job is in the stream again,
next to the baseline of the same Redis taking the same number of raw XADDs in pipelines of 500
(what any republisher must pay at least).

    uv run --frozen python -m bench.republish [--jobs 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from redis.asyncio import Redis

from imgflow.core.settings import Settings, StorageBackend
from imgflow.harness.client import submit_many
from imgflow.harness.servers import free_port, start_stack


async def raw_xadd_rate(redis: Redis, count: int) -> float:
    stream = f"bench:raw:{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    for first in range(0, count, 500):
        async with redis.pipeline(transaction=False) as pipe:
            for _ in range(first, min(count, first + 500)):
                pipe.xadd(stream, {"__data__": b"x" * 120})
            await pipe.execute()
    elapsed = time.perf_counter() - started
    await redis.delete(stream)
    return count / elapsed


async def run(jobs: int, workdir: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = Settings.model_validate(
        {
            "mongodb_database": f"imgflow_republish_{tag}",
            "stream": f"imgflow:republish:{tag}",
            "storage_backend": StorageBackend.local,
            "storage_dir": workdir / "storage",
            "api_port": free_port(),
            "worker_metrics_port": free_port(),
            "requeue_after_s": 2.0,
            "reconcile_interval_s": 0.25,
        }
    )
    stack = start_stack(settings, workdir)
    settings = stack.settings
    stack.worker.terminate()  # nothing consumes: the stream only fills
    redis = Redis.from_url(settings.redis_url)
    try:
        started = time.perf_counter()
        await submit_many(settings, redis, jobs, user_id="republish")
        print(f"submitted {jobs} jobs in {time.perf_counter() - started:.1f} s ({stack.mongo.kind})")
        await asyncio.sleep(settings.requeue_after_s)
        await redis.flushall()
        lost_at = time.perf_counter()
        first = None
        while (length := await redis.xlen(settings.stream)) < jobs:
            if length and first is None:
                first = time.perf_counter()
            if time.perf_counter() - lost_at > 600:
                raise RuntimeError(f"only {length} of {jobs} republished after 600 s")
            await asyncio.sleep(0.01)
        done = time.perf_counter()
        first = first or done
        rate = jobs / max(done - first, 1e-3)
        baseline = await raw_xadd_rate(redis, jobs)
        print(
            f"after FLUSHALL: first republish after {first - lost_at:.2f} s "
            "(requeue_after_s=2: a walk at most every 1 s)"
        )
        print(f"republished {jobs} jobs in {done - first:.2f} s: {rate:,.0f} jobs/s")
        print(f"baseline, raw pipelined XADD on the same Redis: {baseline:,.0f} entries/s")
        print(f"republish / raw XADD: {rate / baseline:.2f}")
    finally:
        await redis.aclose()
        for server in (stack.api, stack.redis, stack.mongo.server):
            if server is not None:
                server.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgflow-republish-") as tmp:
        asyncio.run(run(args.jobs, Path(tmp)))


if __name__ == "__main__":
    main()
