"""A job's life: one function per transition, the only code that writes a job's status or what
goes with it in Redis. The API and the operator call ``accept`` and ``cancel`` (and the API
``revive`` and ``reuse``); the worker calls the rest (and ``publish_due_retries``); the API's reconciler
``republish`` (imgflow.core.submit.requeue_lost) and ``remove`` (imgflow.core.retention).

::

    accept ─▶ pending ──start──▶ processing ──complete──▶ completed
                 ▲  ▲                │   │
                 │  └─retry_later────┤   └──fail──▶ failed ──revive──▶ pending
                 └────give_back──────┘
    pending, processing ──cancel, stop_cancelled──▶ cancelled
    (new) ──reuse──▶ completed, from an identical finished job's outputs

Each transition is one MongoDB command (imgflow.core.store, every write DURABLE) and one Redis
pipeline after it carrying all that goes with the change (the job's keys: imgflow.core.jobkeys):
the job's snapshot, its announcement to followers, its tenant's place, its webhooks, its queue
message and entry, its retry or its dead letter (imgflow.core.retries). A change to a stored job
also makes the job's snapshot lapse within seconds before the write, one round trip more: a writer
that dies in between leaves no snapshot to outlive the change for longer (imgflow.core.snapshots).
A transition that ends a job its worker runs lets go of what the worker holds (``Held``: the
message, acknowledged; the lease) in its pipeline too.

Cancelling respects the lease: a job a live worker holds is only marked (``jobkeys.cancel_key``) and that
worker stops at its next step (``stop_cancelled``; ``complete`` reads the mark a last time in the
round trip before its write); any other unfinished job is cancelled at once.
The mark is set in the same script that looks at the lease, and the worker reads it in the script
that takes the lease, so between the two one of them always sees the other.

If Redis refuses an accepted job's message, the record and the stored original are removed again
and the tenant's place freed, and ``QueueUnavailable`` is raised (imgflow.core.errors): nothing is
left half-accepted. A process that dies between the insert and the pipeline leaves a ``pending``
job with no message, which the reconciler publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from pymongo.errors import DuplicateKeyError, PyMongoError
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from imgflow.core import jobkeys, quota, schedule
from imgflow.core.errors import DatabaseUnavailable, QueueUnavailable, StorageUnavailable
from imgflow.core.jobs import Job, JobResult, JobStatus, UploadSource, output_key, owned_original, utcnow
from imgflow.core.queue import DATA, inflight_key, job_id_of
from imgflow.core.retries import dead_letter_key, remove_dead_letters, retry_key, take_due_retries
from imgflow.core.settings import Settings
from imgflow.core.storage import Storage
from imgflow.core.store import JobStore
from imgflow.core.webhooks import attempts_key

log = logging.getLogger(__name__)


class JobBackends(Protocol):
    """What the transitions use: the API's state, the worker's processor and the operator's
    context all have these."""

    @property
    def settings(self) -> Settings: ...
    @property
    def store(self) -> JobStore: ...
    @property
    def redis(self) -> Redis: ...
    @property
    def storage(self) -> Storage: ...


async def accept(
    b: JobBackends,
    job: Job,
    *,
    original: Path | None = None,
    media_type: str = "",
    take_place: bool = False,
    insert_by: float | None = None,
) -> Job:
    """Accept a new job: take a place among its tenant's unfinished jobs (``take_place``; raises
    ``quota.TenantFull`` at the cap), store its original (``original``, a local file), insert it
    (only before ``insert_by``, epoch seconds: then its Idempotency-Key may be another request's),
    then queue, snapshot and announce it. On a failure what was done is undone and a
    ``BackendUnavailable`` raised naming the backend (``DuplicateKeyError`` as it is: a job with
    this id exists)."""
    s = b.settings
    try:
        if take_place:
            await _take_place(b, job)
    except RedisError as exc:
        raise QueueUnavailable(str(exc), what="Redis") from exc
    except PyMongoError as exc:
        raise DatabaseUnavailable(str(exc)) from exc
    try:
        if original is not None:
            assert isinstance(job.source, UploadSource)
            try:
                await b.storage.save(job.source.key, original, media_type)
            except (PyMongoError, StorageUnavailable, OSError) as exc:  # GridFS, S3, a directory
                raise StorageUnavailable(str(exc), what=f"Storage ({s.storage_backend.value})") from exc
        if insert_by is not None and time.time() >= insert_by:
            raise DatabaseUnavailable("the job could not be stored in time; nothing was kept")
        try:
            await b.store.insert(job)
        except DuplicateKeyError:
            raise
        except PyMongoError as exc:
            raise DatabaseUnavailable(str(exc)) from exc
        try:
            async with b.redis.pipeline(transaction=False) as pipe:
                await jobkeys.publish(pipe, s, [job])
                jobkeys.put_snapshot(pipe, s, job)
                jobkeys.announce(pipe, s, job.job_id, job.status)
                await pipe.execute()
        except Exception as exc:  # redis-py raises several unrelated types for "no Redis"
            with contextlib.suppress(Exception):  # else the reconciler publishes it: accepted after all
                await b.store.delete(job.job_id)
            with contextlib.suppress(Exception):  # in case the pipeline got as far as the snapshot
                await jobkeys.forget_snapshots(b.redis, s, job.job_id)
            raise QueueUnavailable(str(exc) or type(exc).__name__) from exc
    except BaseException as exc:
        # a job with this id exists (an operator's second pass): the place is that job's
        await _undo(b, job, original is not None, take_place and not isinstance(exc, DuplicateKeyError))
        raise
    return job


async def _take_place(b: JobBackends, job: Job) -> None:
    """A place among the tenant's unfinished jobs. At the cap, places whose jobs have finished
    without freeing them (a lost removal) are freed first."""
    redis, settings, tenant = b.redis, b.settings, job.tenant
    if await jobkeys.take_place(redis, settings, tenant, job.job_id):
        return
    stale = []
    for job_id in await quota.oldest(redis, settings, tenant, 20):
        held = await b.store.view(job_id)  # a finished job's snapshot says so
        if held is None or held.status.finished:
            stale.append(job_id)
    await jobkeys.free_places(redis, settings, tenant, *stale)
    if stale and await jobkeys.take_place(redis, settings, tenant, job.job_id):
        return
    raise quota.TenantFull(tenant, settings.tenant_max_unfinished)


async def _undo(b: JobBackends, job: Job, stored: bool, placed: bool) -> None:
    """Best effort: an original left behind is the orphan sweep's, a place the cap's next check."""
    if stored and isinstance(job.source, UploadSource):
        with contextlib.suppress(Exception):
            await b.storage.delete(job.source.key)
    if placed:
        with contextlib.suppress(RedisError):
            await jobkeys.free_places(b.redis, b.settings, job.tenant, job.job_id)


async def restore(b: JobBackends, job: Job) -> Job:
    """Insert again, ``pending``, a job whose record the database lost, from its message's copy
    (the worker holds the message, so it is not queued again). ``DuplicateKeyError`` if another
    worker restored it meanwhile."""
    restored = job.model_copy(update={"status": JobStatus.pending, "worker": None, "updated_at": utcnow()})
    await b.store.insert(restored)
    with contextlib.suppress(RedisError):  # without a snapshot, readers use MongoDB
        async with b.redis.pipeline(transaction=False) as pipe:
            jobkeys.put_snapshot(pipe, b.settings, restored)
            await pipe.execute()
    return restored


async def start(b: JobBackends, job: Job, worker: str) -> Job | None:
    """``processing`` by ``worker`` (who holds the job's lease and read it unfinished), with the
    crash count and isolation decided for it; None if the job is gone."""
    await jobkeys.age_snapshots(b.redis, b.settings, job.job_id)
    started = await b.store.start(job, worker)
    if started is not None:
        await _best_effort(b, started)
    return started


async def complete(b: JobBackends, job: Job, result: JobResult, *, held: Held | None = None) -> Job | None:
    """``completed`` with ``result``; then, with a reuse key, its outputs offered to identical jobs
    (``reuse``), its followers told, its tenant's place freed, its webhooks filed, what its worker
    ``held`` let go of, and its original deleted (unless originals are kept). Its cancellation
    asked for meanwhile (read in the round trip before the write, the worker's last look):
    ``cancelled`` instead, as by ``stop_cancelled``. None if it is gone."""
    async with b.redis.pipeline(transaction=False) as pipe:
        jobkeys.age_snapshot(pipe, b.settings, job.job_id)
        pipe.exists(jobkeys.cancel_key(b.settings, job.job_id))
        _, asked = await pipe.execute()
    if asked:
        return await stop_cancelled(b, job, held=held)
    done = await b.store.complete(job.job_id, result, expires_at=_expiry(b.settings))
    if done is not None:
        if job.reuse_key is not None:  # before it is announced: who sees it completed finds it
            try:
                await b.store.offer(job.reuse_key, job.job_id)
            except PyMongoError as exc:  # only a later identical job misses it: decoded again
                log.warning("job %s completed, its outputs not offered for reuse (%s)", job.job_id, exc)
        await _finished(b, job, done, held=held)
    return done


async def reuse(b: JobBackends, job: Job, origin: Job) -> Job | None:
    """A new job identical to ``origin`` (same tenant, source bytes and options; ``reusable``):
    inserted ``completed`` at once with ``origin``'s outputs, which ``origin`` keeps, with its
    files, until this job expires too (``shared_until``); what follows as for ``complete``. No
    place is taken, no original stored, nothing queued. None if ``origin`` expired or went
    meanwhile: the caller accepts the job as usual."""
    expires_at = _expiry(b.settings)
    try:
        await jobkeys.forget_snapshots(b.redis, b.settings, origin.job_id)
    except RedisError as exc:
        raise QueueUnavailable(str(exc), what="Redis") from exc
    try:
        # kept from before this job exists: a sweep reading it expired after this write skips it
        shared = await b.store.share(origin.job_id, until=expires_at)
        if shared is None or not shared.reusable(utcnow()) or shared.result is None:
            return None
        result = shared.result.model_copy(update={"reused_from": shared.job_id, "processed_at": utcnow()})
        done = job.model_copy(
            update={
                "status": JobStatus.completed,
                "result": result,
                "expires_at": expires_at,
                "updated_at": utcnow(),
            }
        )
        await b.store.insert(done)
    except DuplicateKeyError:
        raise
    except PyMongoError as exc:
        raise DatabaseUnavailable(str(exc)) from exc
    try:
        await _finished(b, job, done)
    except Exception as exc:  # as for accept: nothing is left half-done
        with contextlib.suppress(Exception):
            await b.store.delete(done.job_id)
        raise QueueUnavailable(str(exc) or type(exc).__name__) from exc
    return done


async def fail(
    b: JobBackends, job: Job, error: str, *, dead_letter: bool = False, held: Held | None = None
) -> Job | None:
    """``failed`` with ``error`` (a dead letter too with ``dead_letter``: it failed after its last
    retry); what follows as for ``complete``. None if it is gone."""
    log.info("job %s failed: %s", job.job_id, error)
    await jobkeys.age_snapshots(b.redis, b.settings, job.job_id)
    done = await b.store.fail(job.job_id, error, crashes=job.crashes, expires_at=_expiry(b.settings))
    if done is not None:
        await _finished(b, job, done, dead_letter=error if dead_letter else None, held=held)
    return done


async def cancel(b: JobBackends, job: Job) -> Job | None:
    """Cancel an unfinished job: ``cancelled`` at once (what follows as for ``complete``, its
    retry unscheduled, its outputs removed), unless a live worker holds it: then it is only marked,
    its worker stops at its next step, and the job is returned as it was. None if it finished
    (or is gone) meanwhile."""
    if await jobkeys.ask_cancel(b.redis, b.settings, job.job_id):
        return job
    done = await _cancel_now(b, job)
    if done is not None:
        await _remove_outputs(b, job)
    return done


async def stop_cancelled(b: JobBackends, job: Job, *, held: Held | None = None) -> Job | None:
    """The worker holding ``job`` saw its cancellation mark: ``cancelled`` now, with what follows
    as for ``cancel`` and what the worker ``held`` let go of; None if it was cancelled already (by
    the API, which took it for a dead worker's). Either way what this worker stored of it is
    removed."""
    done = await _cancel_now(b, job, held=held)
    await _remove_outputs(b, job)
    return done


async def _cancel_now(b: JobBackends, job: Job, *, held: Held | None = None) -> Job | None:
    await jobkeys.age_snapshots(b.redis, b.settings, job.job_id)
    done = await b.store.cancel(job.job_id, expires_at=_expiry(b.settings))
    if done is None:
        return None
    log.info("job %s cancelled", job.job_id)
    await _finished(b, job, done, held=held)
    return done


async def _remove_outputs(b: JobBackends, job: Job) -> None:
    """What an earlier or the current attempt stored of a cancelled job."""
    for index, spec in enumerate(job.outputs):
        try:
            await b.storage.delete(output_key(job.job_id, index, spec))
        except Exception as exc:  # the backends raise OSError, PyMongoError, ...
            log.warning("job %s cancelled, its output %d kept (%s)", job.job_id, index, exc)


async def _finished(
    b: JobBackends, job: Job, done: Job, *, dead_letter: str | None = None, held: Held | None = None
) -> None:
    s = b.settings
    async with b.redis.pipeline(transaction=False) as pipe:
        jobkeys.put_snapshot(pipe, s, done)
        jobkeys.announce(pipe, s, job.job_id, done.status)
        jobkeys.free_place(pipe, s, job.tenant, job.job_id)
        jobkeys.file_finished(
            pipe, s, job.job_id, job.tenant, f"job.{done.status.value}", has_callback=bool(job.callback_url)
        )
        if dead_letter is not None:
            pipe.xadd(dead_letter_key(s), {"job_id": job.job_id, "error": dead_letter})
        if done.status is JobStatus.cancelled:  # a job waiting for a retry waits no more
            pipe.zrem(retry_key(s), job.job_id)
        if held is not None:  # the outcome is stored: the message may go
            let_go(pipe, s, job.job_id, held, acknowledge=True)
        await pipe.execute()
    if held is not None:
        held.released = True
    original = owned_original(job)
    if not s.keep_originals and original:
        await b.storage.delete(original)


async def retry_later(b: JobBackends, job: Job, error: str) -> JobStatus:
    """It did not work now, for a reason that may pass: ``pending`` again after the next delay of
    ``retry_delays_s`` (+-20% jitter, so that jobs failed together do not come back together);
    after the last, ``failed`` and a dead letter. Returns which."""
    delays = b.settings.retry_delays
    if job.retries >= len(delays):
        tries = job.retries + 1
        await fail(
            b, job, f"Gave up after {tries} {'try' if tries == 1 else 'tries'}: {error}", dead_letter=True
        )
        return JobStatus.failed
    delay = delays[job.retries] * random.uniform(0.8, 1.2)
    log.info("job %s: %s; trying again in %.1f s", job.job_id, error, delay)
    await jobkeys.age_snapshots(b.redis, b.settings, job.job_id)
    waiting = await b.store.wait_for_retry(job, error, utcnow() + timedelta(seconds=delay))
    if waiting is not None:
        async with b.redis.pipeline(transaction=False) as pipe:
            jobkeys.put_snapshot(pipe, b.settings, waiting)
            jobkeys.announce(pipe, b.settings, job.job_id, JobStatus.pending)
            pipe.zadd(retry_key(b.settings), {job.job_id: time.time() + delay})
            await pipe.execute()
    return JobStatus.pending


async def give_back(b: JobBackends, worker: str, message_id: bytes | str | int) -> None:
    """A stopping ``worker`` hands back a message it holds: its job, if the worker was on it, is
    ``pending`` again with the attempt not counted; the message goes to the stream's end (its entry
    recorded) and the one held is acknowledged."""
    s = b.settings
    found = await b.redis.xrange(s.stream, min=message_id, max=message_id)
    fields: dict[bytes, bytes] = dict(found[0][1] or {}) if found else {}  # type: ignore[arg-type]
    data = fields.get(DATA)
    job_id = job_id_of(data) if data is not None else None
    job = await b.store.get(job_id) if job_id is not None else None
    released = None
    if job is not None and job.status is JobStatus.processing and job.worker == worker:
        await jobkeys.age_snapshots(b.redis, s, job.job_id)
        released = await b.store.release(job)
    async with b.redis.pipeline(transaction=True) as pipe:
        if data is not None and job_id is not None:
            jobkeys.requeue(pipe, s, job_id, data)
        pipe.xack(s.stream, s.consumer_group, message_id)
        schedule.done(pipe, s, [message_id])
        if released is not None:
            jobkeys.put_snapshot(pipe, s, released)
            jobkeys.announce(pipe, s, released.job_id, JobStatus.pending)
        await pipe.execute()


async def revive(b: JobBackends, job: Job) -> Job | None:
    """A failed job an operator sends back from the dead letters: ``pending``, retries reset, and
    queued again. None if it is not among the dead letters (or is gone)."""
    if not await remove_dead_letters(b.redis, b.settings, job.job_id):
        return None
    await jobkeys.age_snapshots(b.redis, b.settings, job.job_id)
    revived = await b.store.revive(job.job_id)
    if revived is None:
        return None
    try:
        async with b.redis.pipeline(transaction=False) as pipe:
            await jobkeys.publish(pipe, b.settings, [revived])
            jobkeys.put_snapshot(pipe, b.settings, revived)
            jobkeys.announce(pipe, b.settings, revived.job_id, JobStatus.pending)
            pipe.delete(jobkeys.cancel_key(b.settings, revived.job_id))  # a cancel that came too late
            await pipe.execute()
    except Exception as exc:  # pending without a message: the reconciler publishes it
        raise QueueUnavailable(str(exc) or type(exc).__name__) from exc
    return revived


async def republish(redis: Redis, settings: Settings, jobs: Sequence[Job]) -> None:
    """Queue these (unfinished) jobs again, in one round trip: the reconciler's lost jobs, the
    retries that are due."""
    if not jobs:
        return
    try:
        async with redis.pipeline(transaction=False) as pipe:
            await jobkeys.publish(pipe, settings, jobs)
            await pipe.execute()
    except Exception as exc:
        raise QueueUnavailable(str(exc) or type(exc).__name__) from exc


async def publish_due_retries(store: JobStore, redis: Redis, settings: Settings) -> int:
    """Queue the jobs whose retry is due (each taken by one process only); returns how many. A
    process dying before it publishes them leaves them to the reconciler (unfinished, no message,
    due)."""
    due = await take_due_retries(redis, settings, time.time())
    jobs = [job for job in await asyncio.gather(*(store.get(job_id) for job_id in due)) if job is not None]
    await republish(redis, settings, jobs)
    return len(jobs)


@dataclass
class Held:
    """What a worker holds while it runs a job: the stream entry it was given, the job's lease and
    the job's place in its in-flight set. The transition that ends the job lets go of them in its
    own pipeline (``released`` then); else the worker does (``let_go``)."""

    worker: str
    entry_id: bytes
    released: bool = False


def let_go(pipe: Pipeline, settings: Settings, job_id: str, held: Held, *, acknowledge: bool) -> None:
    """Queue on ``pipe``: the worker no longer runs the job (off its in-flight set, the lease given
    up if it still holds it) and, with ``acknowledge`` (the job's outcome is stored), acknowledges
    its entry, which no longer carries the job (a newer entry, a give-back's, stays recorded)."""
    if acknowledge:
        pipe.xack(settings.stream, settings.consumer_group, held.entry_id)
        schedule.done(pipe, settings, [held.entry_id])
        jobkeys.forget_entry(pipe, settings, job_id, held.entry_id)
    pipe.srem(inflight_key(settings, held.worker), job_id)
    jobkeys.release_lease(pipe, settings, job_id, held.worker)


async def remove(store: JobStore, redis: Redis, settings: Settings, job_id: str) -> None:
    """Delete an expired job's record, then its snapshot, progress events and webhook attempts
    (left behind if Redis is down: each lapses on its own)."""
    await store.delete(job_id)
    try:
        await redis.delete(
            jobkeys.snapshot_key(settings, job_id),
            jobkeys.events_key(settings, job_id),
            attempts_key(settings, job_id),
            jobkeys.cancel_key(settings, job_id),
        )
    except RedisError as exc:
        log.warning("Redis keys of deleted job %s kept (%s)", job_id, exc)


async def _best_effort(b: JobBackends, job: Job) -> None:
    """The snapshot and announcement of a change nothing else waits on: without them, readers use
    MongoDB and followers wait for their next heartbeat."""
    try:
        async with b.redis.pipeline(transaction=False) as pipe:
            jobkeys.put_snapshot(pipe, b.settings, job)
            jobkeys.announce(pipe, b.settings, job.job_id, job.status)
            await pipe.execute()
    except RedisError as exc:
        log.warning("job %s %s not announced (%s)", job.job_id, job.status.value, exc)


def _expiry(settings: Settings) -> datetime:
    return utcnow() + timedelta(seconds=settings.retention_s)
