"""The reconciler's republishing of jobs whose message is lost (``requeue_lost``), through
imgflow.core.lifecycle."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

from redis.asyncio import Redis

from imgflow.core import lifecycle
from imgflow.core.jobs import UNFINISHED, utcnow
from imgflow.core.queue import lost_jobs
from imgflow.core.settings import Settings
from imgflow.core.store import JobStore

log = logging.getLogger(__name__)


BATCH = 500


async def requeue_lost(store: JobStore, redis: Redis, settings: Settings) -> int:
    """Publish again every unfinished job, untouched for ``requeue_after_s``, whose message is no
    longer in the stream; returns how many.

    Covers what at-least-once delivery alone cannot: a publisher that died after the insert, a
    Redis that lost its data, a stream trimmed past undelivered entries. A job merely waiting in
    the stream (a backlog) or held by a worker is left alone: republishing it would only add
    duplicates. Nothing is written to MongoDB; per batch of 500: Redis is asked twice, the lost
    ones are read again by ``_id`` and published in one pipeline, so a Redis that lost everything
    is refilled in a few round trips per batch (bench/README.md, Republishing after Redis lost its
    data, has the rate).
    """
    cutoff = utcnow() - timedelta(seconds=settings.requeue_after_s)
    requeued = 0
    async for batch in store.stale_ids(cutoff, batch=BATCH):
        lost = await lost_jobs(redis, settings, batch)
        # A job that finished since it was read has had its entry forgotten at its ack: it looks
        # lost but is done. Read those again (by _id, concurrently) and keep the unfinished.
        again = await asyncio.gather(*(store.get(job_id) for job_id in lost))
        # A job waiting for a retry has no message until it is due; one due for longer than
        # requeue_after_s lost it (Redis lost the retry schedule, or its publisher died).
        unfinished = [
            job
            for job in again
            if job is not None
            and job.status in UNFINISHED
            and (job.next_attempt_at is None or job.next_attempt_at < cutoff)
        ]
        if unfinished:
            await lifecycle.republish(redis, settings, unfinished)
            log.info("published %d job(s) whose message was lost", len(unfinished))
            requeued += len(unfinished)
    return requeued
