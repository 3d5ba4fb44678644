"""The latest state of each job, as a snapshot in Redis: what clients read (GET a job, its events)
costs one Redis GET instead of a MongoDB query, so it stays the same however many jobs are stored
(FerretDB 1.24 answers no filter from an index; bench/studies/README.md, What each job-path
operation costs as jobs accumulate).

MongoDB stays the truth; a snapshot is never ahead of it. Whoever changes a job
(imgflow.core.lifecycle) makes its snapshot lapse within ``STALE_S`` seconds before the write and
sets the new one after it (imgflow.core.jobkeys): readers see the job as it was until the change
meanwhile, and a writer that dies in between leaves the old snapshot stale for at most that long,
then readers fall back to MongoDB. A reader that misses fills the snapshot only if none is there
(SET NX) and only for ``STALE_S`` seconds, so a fill that raced a writer's crash is stale for at
most that long too. Decisions about a job (the worker's, the reconciler's) read MongoDB.
"""

from __future__ import annotations

import contextlib

from redis.asyncio import Redis
from redis.exceptions import RedisError

from imgflow.core.jobkeys import STALE_S, snapshot_key
from imgflow.core.jobs import Job
from imgflow.core.settings import Settings


class Snapshots:
    """What clients read of the jobs' snapshots."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._settings = settings

    async def get(self, job_id: str) -> Job | None:
        """The snapshot, or None (none there, or Redis unreachable: read MongoDB then)."""
        try:
            raw = await self._redis.get(snapshot_key(self._settings, job_id))
        except RedisError:
            return None
        return Job.model_validate_json(raw) if raw else None

    async def fill(self, job: Job) -> None:
        """The job as a reader found it in MongoDB: only if no writer's snapshot is there."""
        key = snapshot_key(self._settings, job.job_id)
        with contextlib.suppress(RedisError):
            await self._redis.set(key, job.model_dump_json(), ex=STALE_S, nx=True)
