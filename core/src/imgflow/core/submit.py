"""Accepting a job: record it, then queue it. The one path the API and the operator share.

If the queue refuses the message, the job record is removed again and ``QueueUnavailable`` is
raised, so a caller can answer 503 and nothing is left half-accepted. A process that dies between
the two steps leaves a ``pending`` job, which the reconciler (``requeue_stale``) republishes.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from faststream.redis import RedisBroker

from imgflow.core.jobs import Job, utcnow
from imgflow.core.queue import QueueUnavailable, publish_job
from imgflow.core.settings import Settings
from imgflow.core.store import JobStore

log = logging.getLogger(__name__)


async def submit_job(store: JobStore, broker: RedisBroker, settings: Settings, job: Job) -> Job:
    await store.insert(job)
    try:
        await publish_job(broker, settings, job.job_id)
    except QueueUnavailable:
        await store.delete(job.job_id)
        raise
    return job


async def requeue_stale(store: JobStore, broker: RedisBroker, settings: Settings) -> int:
    """Republish unfinished jobs nobody touched for ``requeue_after_s``; returns how many.

    Covers what at-least-once delivery alone cannot: a publisher that died after the insert, a
    Redis that lost its data, a stream trimmed past undelivered entries. A duplicate message is
    harmless because the worker's status changes are conditional.
    """
    cutoff = utcnow() - timedelta(seconds=settings.requeue_after_s)
    requeued = 0
    for job in await store.stale(cutoff):
        if not await store.touch(job):
            continue  # another reconciler or a worker got there first
        try:
            await publish_job(broker, settings, job.job_id)
        except QueueUnavailable:
            log.warning("requeue of %s failed: Redis unavailable; will retry", job.job_id)
            return requeued
        log.info("requeued stale %s job %s", job.status.value, job.job_id)
        requeued += 1
    return requeued
