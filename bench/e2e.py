"""End-to-end part of ``make bench``: the corpus through the running stack over HTTP.

Starts Redis, the MongoDB-wire server (FerretDB unless ``mongod`` or ``MONGODB_URL`` is there), the
API and one worker process (``IMGFLOW_WORKER_CONCURRENCY=2``, libvips' default threads) on loopback,
all sharing this machine's cores. Originals and thumbnails go to the local storage backend (a
directory) unless ``BENCH_E2E_STORAGE=gridfs`` or ``=s3`` (SeaweedFS's ``weed server -s3`` from
.tools, started on loopback beside the others and counted with them). FerretDB's SQLite backend
scans every stored chunk for each GridFS operation, so with GridFS each job costs more than the
one before (about +60 ms per GridFS operation for every 3 MB original already stored, measured
here) and the figures would describe FerretDB, not imgflow. With mongod or ``MONGODB_URL``,
GridFS is a fair choice. Then ``BENCH_E2E_PASSES`` passes over the corpus (default 3) are submitted with
``POST /api/image-processing/jobs`` by ``BENCH_E2E_INFLIGHT`` clients (default 4: twice what the
worker takes at once, so it never waits for work), each following
its job on ``GET /api/image-processing/jobs/{jobId}/events`` (Server-Sent Events) until it is
completed (``BENCH_E2E_WAIT=poll``: polling ``GET .../jobs/{jobId}`` every ``BENCH_E2E_POLL_MS``,
50, instead), then submitting the next. A short warm-up (one image per subset) comes first and is not counted.
``BENCH_E2E_SUBSETS`` (e.g. ``jpeg1080``; default all) keeps to some subsets of the corpus.

Latency is submit-to-completed: from the moment the client starts the POST to the job's
``result.processedAt``, which the worker stamps just before it records the job completed (same
clock, this machine); the poll that sees it comes up to a poll interval later and is reported apart.

    python -m bench.e2e [--engine bench/.results/engine.json] [--out bench/.results/e2e.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import httpx
from redis.asyncio import Redis

from bench import corpus
from bench.system import Usage, status_kb, tree_cpu_seconds
from imgflow.core.settings import Settings, StorageBackend
from imgflow.harness import ops
from imgflow.harness.jobpath import trace_one_job
from imgflow.harness.servers import S3Server, free_port, seaweedfs_server, start_stack

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / ".results"
JOBS = "/api/image-processing/jobs"
POLL_S = float(os.environ.get("BENCH_E2E_POLL_MS", "50")) / 1000
# how a client learns that its job is done: "sse" (GET .../events, one connection) or "poll"
WAIT = os.environ.get("BENCH_E2E_WAIT", "sse")
JOB_TIMEOUT_S = 120.0
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Record:
    subset: str
    submitted: float  # wall clock, when the POST started
    accepted: float  # when the 202 came back
    seen: float  # when a poll saw it completed
    processed: float  # the worker's result.processedAt


def _timestamp(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


async def run_job(client: httpx.AsyncClient, image: corpus.Image, data: bytes) -> Record:
    submitted = time.time()
    response = await client.post(
        JOBS,
        files={"file": (image.path.name, data, "application/octet-stream")},
        data={"userId": "bench"},
    )
    if response.status_code != 202:
        raise RuntimeError(f"POST {image.path.name}: {response.status_code} {response.text}")
    accepted = time.time()
    job_id = response.json()["jobId"]
    job = await (follow(client, job_id) if WAIT == "sse" else poll(client, job_id, submitted))
    if job["status"] == "failed":
        raise RuntimeError(f"{image.path.name}: job failed: {job.get('error')}")
    result = job["result"]
    if (result["width"], result["height"]) != (100, 100):
        raise RuntimeError(f"{image.path.name}: thumbnail is {result['width']}x{result['height']}")
    return Record(image.subset, submitted, accepted, time.time(), _timestamp(result["processedAt"]))


async def poll(client: httpx.AsyncClient, job_id: str, submitted: float) -> dict[str, Any]:
    while True:
        await asyncio.sleep(POLL_S)
        job: dict[str, Any] = (await client.get(f"{JOBS}/{job_id}")).json()
        if job["status"] in ("completed", "failed"):
            return job
        if time.time() - submitted > JOB_TIMEOUT_S:
            raise TimeoutError(f"job {job_id}: not finished after {JOB_TIMEOUT_S:g} s")


async def follow(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    """The job's Server-Sent Events until the stream ends; the last event is the finished job."""
    last: dict[str, Any] = {}
    async with asyncio.timeout(JOB_TIMEOUT_S), client.stream("GET", f"{JOBS}/{job_id}/events") as response:
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                last = json.loads(line.removeprefix("data: "))
    return last


async def push(client: httpx.AsyncClient, work: list[corpus.Image], inflight: int) -> list[Record]:
    payload = {image.path: image.path.read_bytes() for image in work}
    return await closed_loop(work, inflight, lambda image: run_job(client, image, payload[image.path]))


async def closed_loop(
    work: list[T], inflight: int, one: Callable[[T], Awaitable[R]], until: float | None = None
) -> list[R]:
    """``inflight`` clients, each starting the next item of ``work`` as soon as its last one is done,
    until ``work`` runs out or, with ``until`` (a ``time.time()``), no item starts after it."""
    queue = deque(work)
    results: list[R] = []

    async def client_loop() -> None:
        while queue and (until is None or time.time() < until):
            results.append(await one(queue.popleft()))

    await asyncio.gather(*(client_loop() for _ in range(inflight)))
    return results


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return float(ordered[index])


BLOCK = 50


def block_rates(started: float, finished: list[float]) -> list[float]:
    """Images/s of each successive block of ``BLOCK`` completions: flat if a job's cost does not
    grow with the jobs stored before it."""
    times = [started, *sorted(finished)]
    return [
        BLOCK / (times[end] - times[end - BLOCK])
        for end in range(BLOCK, len(times), BLOCK)
        if times[end] > times[end - BLOCK]
    ]


def engine_rate(engine: dict[str, Any], config: str, counts: dict[str, int]) -> float:
    """Images/s of an engine configuration over a mix of subsets: total images / total time."""
    seconds = sum(n / float(engine["subsets"][key]["configs"][config]["best"]) for key, n in counts.items())
    return sum(counts.values()) / seconds


def raise_exit(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)


def start_s3(workdir: Path, logs: Path) -> tuple[S3Server, dict[str, Any]]:
    """SeaweedFS on loopback, and the settings that store in it."""
    s3 = seaweedfs_server(workdir / "seaweedfs")
    s3.server.log = logs / "e2e-seaweedfs.log"
    s3.server.start()
    try:
        s3.wait_ready()
    except BaseException:
        s3.stop()
        raise
    return s3, {
        "s3_endpoint": s3.endpoint,
        "s3_bucket": "imgflow-bench",
        "s3_access_key_id": s3.access_key,
        "s3_secret_access_key": s3.secret_key,
    }


def stack_settings(workdir: Path, storage: StorageBackend, extra: dict[str, Any] | None = None) -> Settings:
    """imgflow's default settings, with names of its own in the shared servers and free ports."""
    tag = uuid.uuid4().hex[:8]
    return Settings.model_validate(
        {
            "mongodb_database": f"imgflow_bench_{tag}",
            "stream": f"imgflow:bench:{tag}",
            "consumer_group": f"bench-{tag}",
            "storage_backend": storage,
            "storage_dir": workdir / "storage",
            "api_port": free_port(),
            "worker_metrics_port": free_port(),
            "worker_concurrency": 2,
            # the corpus goes round several times: every image made by a worker, none reused
            "reuse_disabled_tenants": "*",
            **(extra or {}),
        }
    )


async def bench(
    logs: Path,
    workdir: Path,
    passes: int,
    inflight: int,
    storage: StorageBackend,
    subsets: set[str] | None = None,
) -> dict[str, Any]:
    s3, s3_settings = start_s3(workdir, logs) if storage is StorageBackend.s3 else (None, {})
    settings = stack_settings(workdir, storage, s3_settings)
    try:
        stack = start_stack(settings, workdir, logs=logs)
    except BaseException:
        if s3 is not None:
            s3.stop()
        raise
    api, worker, redis, mongo = stack.api, stack.worker, stack.redis, stack.mongo
    try:
        images = [i for i in corpus.images() if subsets is None or i.subset in subsets]
        warmup = [next(i for i in images if i.subset == key) for key in {i.subset for i in images}]
        work = images * passes
        random.Random(7).shuffle(work)  # the subsets evenly mixed over the run
        procs = {"worker": worker, "API": api, mongo.kind: mongo.server, "Redis": redis}
        if s3 is not None:
            procs["SeaweedFS"] = s3.server
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{stack.settings.api_port}",
            timeout=60,
            headers={"Authorization": f"Bearer {stack.settings.admin_key}"},
        ) as client:
            await push(client, warmup, inflight)
            metrics_urls = [
                f"http://127.0.0.1:{stack.settings.api_port}/metrics",
                f"http://127.0.0.1:{stack.settings.worker_metrics_port}/metrics",
            ]
            ops_before = (
                await ops.mongo_commands(metrics_urls),
                await ops.redis_commands(stack.settings.redis_url),
            )
            reads_before = await redis_reads(stack.settings.redis_url)
            rss_idle = status_kb(worker.pid, "VmRSS")
            cpu_before = {name: tree_cpu_seconds(s.pid) for name, s in procs.items() if s is not None}
            self_before = time.process_time()
            usage = Usage().start()
            started = time.time()
            records = await push(client, work, inflight)
            elapsed = max(r.processed for r in records) - started
            usage.stop()
            cpu = {
                name: tree_cpu_seconds(s.pid) - cpu_before[name] for name, s in procs.items() if s is not None
            }
            cpu["bench client"] = time.process_time() - self_before
            mongo_ops = ops.per_job(ops_before[0], await ops.mongo_commands(metrics_urls), len(records))
            redis_ops = ops.per_job(
                ops_before[1], await ops.redis_commands(stack.settings.redis_url), len(records)
            )
            redis_trips = (await redis_reads(stack.settings.redis_url) - reads_before) / len(records)
        # one more job, on a traced API and worker of its own beside the stack (not timed)
        crossed = await trace_one_job(stack.settings, workdir / "jobpath")
        cpu["other processes"] = usage.others(sum(cpu.values())) * usage.total
        return {
            "jobs": len(records),
            "passes": passes,
            "inflight": inflight,
            "mongo": mongo.kind,
            "storage": storage.value,
            "elapsed_s": elapsed,
            "throughput": len(records) / elapsed,
            "block_rates": block_rates(started, [r.processed for r in records]),
            "latency_ms": [1000 * (r.processed - r.submitted) for r in records],
            "upload_ms": [1000 * (r.accepted - r.submitted) for r in records],
            "poll_lag_ms": [1000 * max(0.0, r.seen - r.processed) for r in records],
            "by_subset": {
                s.key: [1000 * (r.processed - r.submitted) for r in records if r.subset == s.key]
                for s in corpus.SUBSETS
            },
            "counts": {s.key: sum(1 for r in records if r.subset == s.key) for s in corpus.SUBSETS},
            "worker_rss_idle_kb": rss_idle,
            "worker_peak_rss_kb": status_kb(worker.pid, "VmHWM"),
            "api_peak_rss_kb": status_kb(api.pid, "VmHWM"),
            "cpu_s": cpu,
            "mongodb_ops_per_job": mongo_ops,
            "redis_ops_per_job": redis_ops,
            "redis_round_trips_per_job": redis_trips,
            "files_crossed": crossed.files,
            "machine_cpu_s": usage.total,
            "worker_vips_concurrency": os.environ.get("VIPS_CONCURRENCY", "default"),
            "wait": WAIT,
        }
    finally:
        stack.stop()
        if s3 is not None:
            s3.stop()


async def redis_reads(redis_url: str) -> int:
    """The requests Redis has read from its clients (a command, a pipeline or a script each), every
    process's: the jobs' and the loops' beside them (heartbeats, reconciler, event streams)."""
    redis = Redis.from_url(redis_url)
    try:
        stats = await redis.info("stats")
    finally:
        await redis.aclose()
    return int(stats["total_reads_processed"])


def print_table(result: dict[str, Any]) -> None:
    lat, up, lag = result["latency_ms"], result["upload_ms"], result["poll_lag_ms"]
    print(
        f"\nEnd-to-end: {result['jobs']} jobs ({result['passes']} passes over "
        f"{result['jobs'] // result['passes']} images of the corpus), {result['inflight']} in flight. "
        "API, one worker "
        f"(IMGFLOW_WORKER_CONCURRENCY=2, VIPS_CONCURRENCY {result['worker_vips_concurrency']}), "
        f"Redis and {result['mongo']} ({result['storage']} storage) all share this machine's cores."
    )
    rows = [
        ("throughput", f"{result['throughput']:.1f} images/s over {result['elapsed_s']:.1f} s"),
        (
            "submit -> completed",
            f"p50 {percentile(lat, 50):.0f} ms, p95 {percentile(lat, 95):.0f} ms, max {max(lat):.0f} ms",
        ),
        (
            "  by subset, p50 / p95",
            ", ".join(
                f"{corpus.subset(k).title} {percentile(v, 50):.0f}/{percentile(v, 95):.0f} ms"
                for k, v in result["by_subset"].items()
                if v
            ),
        ),
        (
            "  of which upload (POST -> 202)",
            f"p50 {percentile(up, 50):.0f} ms, p95 {percentile(up, 95):.0f} ms",
        ),
        (
            "  client learns it (not above)",
            f"p50 {percentile(lag, 50):.0f} ms after processedAt, p95 {percentile(lag, 95):.0f} ms "
            + (
                "(Server-Sent Events)"
                if result.get("wait") == "sse"
                else f"(polls every {1000 * POLL_S:.0f} ms)"
            ),
        ),
        (
            "worker RSS",
            f"peak (VmHWM) {result['worker_peak_rss_kb'] / 1024:.0f} MB; "
            f"{result['worker_rss_idle_kb'] / 1024:.0f} MB after warm-up "
            f"(API peak {result['api_peak_rss_kb'] / 1024:.0f} MB)",
        ),
        (
            f"images/s per block of {BLOCK}",
            " ".join(f"{rate:.1f}" for rate in result["block_rates"])
            + (
                f" (last / first {result['block_rates'][-1] / result['block_rates'][0]:.2f})"
                if len(result["block_rates"]) > 1
                else ""
            ),
        ),
        ("MongoDB commands per job", ops.describe(result["mongodb_ops_per_job"])),
        ("Redis commands per job", ops.describe(result["redis_ops_per_job"])),
        ("Redis round trips per job", f"{result.get('redis_round_trips_per_job', float('nan')):.1f}"),
        (
            "files crossed",
            f"{len(result['files_crossed'])} from accept to completed (imgflow.harness.jobpath): "
            + ", ".join(result["files_crossed"]),
        ),
        (
            "CPU seconds used",
            ", ".join(f"{name} {seconds:.1f}" for name, seconds in result["cpu_s"].items())
            + f" (of {result['machine_cpu_s']:.1f} available)",
        ),
    ]
    if "engine_rate" in result:
        rows.append(
            (
                "engine on the same images",
                f"{result['engine_rate']:.1f} images/s (2 threads, default libvips threads: the worker's "
                f"setup; best 2-core setup {result['engine_best_rate']:.1f})",
            )
        )
        rows.append(
            (
                "end-to-end / engine",
                f"{result['throughput'] / result['engine_rate']:.2f} "
                f"(vs best 2-core setup {result['throughput'] / result['engine_best_rate']:.2f})",
            )
        )
    for name, value in rows:
        print(f"  {name:32s}{value}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", type=Path, default=RESULTS / "engine.json")
    parser.add_argument("--out", type=Path, default=RESULTS / "e2e.json")
    args = parser.parse_args()
    passes = int(os.environ.get("BENCH_E2E_PASSES", "3"))
    inflight = int(os.environ.get("BENCH_E2E_INFLIGHT", "4"))
    storage = StorageBackend(os.environ.get("BENCH_E2E_STORAGE", "local"))
    chosen = os.environ.get("BENCH_E2E_SUBSETS", "")
    subsets = {key.strip() for key in chosen.split(",") if key.strip()} or None
    if subsets is not None and not subsets <= {s.key for s in corpus.SUBSETS}:
        parser.error(f"BENCH_E2E_SUBSETS: not subsets of the corpus: {sorted(subsets)}")
    corpus.ensure()
    logs = args.out.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("e2e-*.log"):
        old.unlink()
    signal.signal(signal.SIGTERM, raise_exit)  # so the servers are stopped on `kill` too
    workdir = Path(tempfile.mkdtemp(prefix="imgflow-bench-e2e-"))
    try:
        result = asyncio.run(bench(logs, workdir, passes, inflight, storage, subsets))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.engine.exists():
        engine = json.loads(args.engine.read_text())
        result["engine_rate"] = engine_rate(engine, "imgflow_dc2", result["counts"])
        result["engine_best_rate"] = max(
            engine_rate(engine, c, result["counts"]) for c in ("imgflow_2t", "imgflow_2p", "imgflow_dc2")
        )
    args.out.write_text(json.dumps(result, indent=1))
    print_table(result)


if __name__ == "__main__":
    main()
