"""The latest state of each job, as a snapshot in Redis: what clients read (GET a job, its events)
costs one Redis GET instead of a MongoDB query, so it stays the same however many jobs are stored
(FerretDB 1.24 answers no filter from an index; bench/studies/README.md, What each job-path
operation costs as jobs accumulate).

MongoDB stays the truth; a snapshot is never ahead of it. Whoever changes a job
(imgflow.core.lifecycle) deletes its snapshot before the write and sets the new one after it: a
writer that dies in between leaves no snapshot, and readers fall back to MongoDB. A reader that
misses fills the snapshot only if none is there (SET NX) and only for ``FILL_S`` seconds, so a
fill that raced a writer's crash is stale for at most that long. Decisions about a job (the
worker's, the reconciler's) read MongoDB.
"""

from __future__ import annotations

import contextlib

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from imgflow.core.jobs import Job
from imgflow.core.settings import Settings

KEEP_S = 24 * 3600  # a finished job's snapshot; read after a day, a job falls back to MongoDB
# an unfinished one's: a Redis restarted from its append-only file may have lost the last second's
# writes, and with them a change's snapshot; then the one before is wrong for at most this long
KEEP_UNFINISHED_S = 30
FILL_S = 2  # a reader's fill


class Snapshots:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._prefix = f"{settings.stream}:job:"

    def key(self, job_id: str) -> str:
        return self._prefix + job_id

    async def get(self, job_id: str) -> Job | None:
        """The snapshot, or None (none there, or Redis unreachable: read MongoDB then)."""
        try:
            raw = await self._redis.get(self.key(job_id))
        except RedisError:
            return None
        return Job.model_validate_json(raw) if raw else None

    def put(self, pipe: Pipeline, job: Job) -> None:
        """Queue on ``pipe``: the job as just written to MongoDB."""
        keep = KEEP_S if job.status.finished else KEEP_UNFINISHED_S
        pipe.set(self.key(job.job_id), job.model_dump_json(), ex=keep)

    async def fill(self, job: Job) -> None:
        """The job as a reader found it in MongoDB: only if no writer's snapshot is there."""
        with contextlib.suppress(RedisError):
            await self._redis.set(self.key(job.job_id), job.model_dump_json(), ex=FILL_S, nx=True)

    async def forget(self, *job_ids: str) -> None:
        """Drop the snapshots (before a change: raises if Redis is unreachable, so that the change
        is not made under a snapshot that would outlive it)."""
        if job_ids:
            await self._redis.delete(*(self.key(j) for j in job_ids))
