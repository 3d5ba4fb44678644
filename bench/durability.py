"""What durable job writes cost: the job path's writes on FerretDB's PostgreSQL with fsync and
synchronous commits (what imgflow.harness.ferretdb_pg runs) against the settings it ran with before
(both off, ``--crash-unsafe``: a SIGKILL of the database took back the last ~0.2-0.6 s of writes it
had acknowledged, tests/test_durability.py), on two servers started in this one run.

Per job, the writes of its life through ``JobStore`` (with its ``DURABLE`` write concern, which
FerretDB accepts and leaves to PostgreSQL): the API's insert, the worker's start and its outcome.
One client at a time (what the writes add to a job's latency), then 8 at once (what the server
keeps up with: PostgreSQL flushes concurrent commits together). Rounds alternate between the two
servers; the median round of each is printed, as ms per job and jobs/s, with the ratios.

    uv run --frozen python -m bench.durability [--jobs 150] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from pymongo import AsyncMongoClient

from imgflow.core.jobs import Job, JobResult, UploadSource, utcnow
from imgflow.core.outputs import OutputFormat
from imgflow.core.store import Document, JobStore
from imgflow.harness.servers import MongoChoice, free_port, mongodb_kind, mongodb_server, wait_for_port

RESULT = JobResult(key="k", width=1, height=1, bytes=1, format=OutputFormat.jpeg, processed_at=utcnow())
SETTINGS = {"durable": False, "crash-unsafe (before)": True}


async def job_writes(store: JobStore, jobs: int, clients: int) -> float:
    """Seconds for ``jobs`` jobs' writes (insert, start, complete), ``clients`` at a time."""
    todo = iter([Job(user_id=f"user-{n % 20}", source=UploadSource(key="original-x")) for n in range(jobs)])

    async def client() -> None:
        for job in todo:
            await store.insert(job)
            await store.start(job, "bench")
            await store.complete(job.job_id, RESULT, expires_at=utcnow())

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - started


async def measure(urls: dict[str, str], jobs: int, rounds: int) -> dict[str, dict[int, float]]:
    """Median seconds per job, per settings and number of clients."""
    clients: dict[str, AsyncMongoClient[Document]] = {
        name: AsyncMongoClient(url, tz_aware=True) for name, url in urls.items()
    }
    stores = {
        name: JobStore(client[f"durability_{uuid.uuid4().hex[:8]}"]) for name, client in clients.items()
    }
    seconds: dict[str, dict[int, list[float]]] = {name: {1: [], 8: []} for name in urls}
    try:
        for store in stores.values():
            await store.ensure_indexes()
            await job_writes(store, 20, 1)  # warm-up: connections, the collection's first pages
        for _ in range(rounds):
            for width in (1, 8):
                for name, store in stores.items():
                    seconds[name][width].append(await job_writes(store, jobs, width) / jobs)
    finally:
        for client in clients.values():
            await client.close()
    return {
        name: {w: statistics.median(s) for w, s in by_width.items()} for name, by_width in seconds.items()
    }


def start(workdir: Path, crash_unsafe: bool) -> MongoChoice:
    port = free_port()
    mongo = mongodb_server(workdir, port, crash_unsafe=crash_unsafe)
    assert mongo.server is not None
    mongo.server.start()
    wait_for_port(port, process=mongo.server.process)
    return mongo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if mongodb_kind() != "ferretdb-pg":
        print(f"durability: compares FerretDB's PostgreSQL settings; this run's server is {mongodb_kind()}")
        return
    with tempfile.TemporaryDirectory(prefix="imgflow-durability-") as tmp:
        servers = {
            name: start(Path(tmp) / f"db{n}", unsafe) for n, (name, unsafe) in enumerate(SETTINGS.items())
        }
        try:
            figures = asyncio.run(
                measure({name: m.url for name, m in servers.items()}, args.jobs, args.rounds)
            )
        finally:
            for mongo in servers.values():
                assert mongo.server is not None
                mongo.server.terminate()
    print(
        f"a job's writes (insert, start, complete) on FerretDB on PostgreSQL, median of {args.rounds} rounds:"
    )
    for width in (1, 8):
        for name, by_width in figures.items():
            per_job = by_width[width]
            print(f"  {width} client(s), {name:<22} {per_job * 1000:6.2f} ms/job  {1 / per_job:7.0f} jobs/s")
        durable, before = (figures[name][width] for name in SETTINGS)
        print(
            f"  {width} client(s): durable writes take x{durable / before:.2f} the time of the old settings"
        )


if __name__ == "__main__":
    main()
