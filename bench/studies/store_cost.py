"""What each job-path operation costs as stored jobs accumulate, on a MongoDB-wire server.

Times every operation a job goes through (the API's insert, the worker's read, start and outcome,
a client's poll and listing, a give-back) at 100 and at 5,000 stored jobs in one run, median of
15, and prints the ratio: ~1 for an operation the server answers by key or index, ~50 for one it
answers by scanning the collection. The server is the suite's (FerretDB on SQLite from .tools,
or ``mongod`` on PATH) unless ``MONGODB_URL`` names another, e.g. FerretDB on PostgreSQL.

    uv run --frozen python -m bench.studies.store_cost
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from pymongo import AsyncMongoClient

from imgflow.core.jobs import Job, JobResult, JobStatus, UploadSource, utcnow
from imgflow.core.outputs import OutputFormat
from imgflow.core.store import Document, JobStore
from imgflow.harness.servers import free_port, mongodb_server, wait_for_port

SMALL, LARGE = 100, 5000
SAMPLES = 15


def new_job(user: str) -> Job:
    return Job(user_id=user, source=UploadSource(key="original-x"))


RESULT = JobResult(key="k", width=1, height=1, bytes=1, format=OutputFormat.jpeg, processed_at=utcnow())


async def fill(store: JobStore, up_to: int, have: int) -> None:
    """Finished jobs of many users, as a service accumulates them."""
    for first in range(have, up_to, 500):
        docs = []
        for n in range(first, min(up_to, first + 500)):
            job = new_job(f"user-{n % 200}").model_copy(update={"status": JobStatus.completed})
            docs.append(job.to_document())
        await store._jobs.insert_many(docs)


async def median_ms(operation: Callable[[int], Awaitable[object]]) -> float:
    times = []
    for i in range(SAMPLES):
        started = time.perf_counter()
        await operation(i)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def measure(store: JobStore) -> dict[str, float]:
    """One client's job, step by step, on jobs made for this round."""
    user = f"probe-{uuid.uuid4().hex[:6]}"
    jobs = [new_job(user) for _ in range(SAMPLES)]
    extra = [new_job(user) for _ in range(SAMPLES)]
    figures = {
        "insert (API accept)": await median_ms(lambda i: store.insert(jobs[i])),
        "get (worker admit, client poll)": await median_ms(lambda i: store.get(jobs[i].job_id)),
        "start (worker)": await median_ms(lambda i: store.start(jobs[i], "w")),
        "complete (worker)": await median_ms(
            lambda i: store.complete(jobs[i].job_id, RESULT, expires_at=utcnow())
        ),
        "list a user's newest jobs": await median_ms(
            lambda i: store.list_for_user(user, tenant="default", status=None, limit=20, after=None)
        ),
        "list a user's completed jobs": await median_ms(
            lambda i: store.list_for_user(
                user, tenant="default", status=JobStatus.completed, limit=20, after=None
            )
        ),
    }
    started = []
    for job in extra:
        await store.insert(job)
        started.append(await store.start(job, "w"))
    figures["give back (worker stopping)"] = await median_ms(lambda i: store.release(started[i] or extra[i]))
    figures["fail (worker)"] = await median_ms(
        lambda i: store.fail(extra[i].job_id, "bad", expires_at=utcnow())
    )
    return figures


async def run(url: str, kind: str) -> None:
    client: AsyncMongoClient[Document] = AsyncMongoClient(url, tz_aware=True)
    db = client[f"cost_{uuid.uuid4().hex[:8]}"]
    store = JobStore(db)
    try:
        await store.ensure_indexes()
        await fill(store, SMALL, 0)
        small = await measure(store)
        await fill(store, LARGE, SMALL)
        large = await measure(store)
    finally:
        await client.drop_database(db.name)
        await client.close()
    print(f"job-path operations on {kind}, median of {SAMPLES}:")
    for name in small:
        ratio = large[name] / small[name]
        print(
            f"  {name:<34} {small[name]:7.2f} ms at {SMALL:,}  {large[name]:7.2f} ms at {LARGE:,}"
            f"  x{ratio:.1f}"
        )


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="imgflow-store-cost-") as tmp:
        port = free_port()
        mongo = mongodb_server(Path(tmp), port)
        if mongo.server is not None:
            mongo.server.start()
            wait_for_port(port, process=mongo.server.process)
        try:
            asyncio.run(run(mongo.url, mongo.kind))
        finally:
            if mongo.server is not None:
                mongo.server.terminate()


if __name__ == "__main__":
    main()
