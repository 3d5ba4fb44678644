"""Expiry and cleanup: a finished job, its original and its thumbnail go ``retention_s`` after it
finished (a job whose outputs a later job reused, when that one expires: ``Job.shared_until``);
stored files whose job does not exist go once ``orphan_grace_s`` old.

Run by the API's reconciler, one replica at a time (its Redis lock), in bounded batches. FerretDB
has no TTL indexes, so nothing here relies on them. Deleting files before the job record means a
sweep interrupted half-way is finished by the next one (deletes are idempotent).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from redis.asyncio import Redis

from imgflow.core import lifecycle
from imgflow.core.jobs import Job, owned_original, utcnow
from imgflow.core.settings import Settings
from imgflow.core.storage import NotFound, Storage
from imgflow.core.store import JobStore
from imgflow.core.webhooks import undelivered

# original-<job id>, thumbnail-<job id>.<ext> and thumbnail-<job id>-<variant>.<ext>: the keys
# imgflow stores (a job id is a UUID: 36 characters)
_OWNER = re.compile(
    r"^(?:original-(?P<original>.+)|thumbnail-(?P<thumbnail>[0-9a-f-]{36})(?:-[^.]+)?\.[a-z]+)$"
)


@dataclass
class Swept:
    jobs: int = 0
    objects: int = 0
    bytes: int = 0

    def add(self, other: Swept) -> None:
        self.jobs += other.jobs
        self.objects += other.objects
        self.bytes += other.bytes


def job_keys(job: Job) -> list[str]:
    """The stored files of a job (not an original it borrowed, nor outputs it reused: their job,
    kept while they are shared, deletes them)."""
    original = owned_original(job)
    keys = [original] if original else []
    if job.result is not None and job.result.reused_from is None:
        keys.extend(job.result.keys)
    return keys


async def delete_files(storage: Storage, keys: list[str], swept: Swept) -> None:
    for key in keys:
        try:
            size = (await storage.stat(key)).size
        except NotFound:  # gone, or half-written by a crash: delete what is there, count nothing
            await storage.delete(key)
            continue
        await storage.delete(key)
        swept.objects += 1
        swept.bytes += size


async def delete_job(job: Job, store: JobStore, storage: Storage, redis: Redis, settings: Settings) -> Swept:
    """A job and everything it left: files, progress events, webhook attempts, the record."""
    swept = Swept(jobs=1)
    await delete_files(storage, job_keys(job), swept)
    await lifecycle.remove(store, redis, settings, job.job_id)
    return swept


async def sweep_expired(
    store: JobStore, storage: Storage, redis: Redis, settings: Settings, *, batches: int = 10
) -> Swept:
    total = Swept()
    for _ in range(batches):
        expired = await store.expired(utcnow())
        waiting = await undelivered(redis, settings, [job.job_id for job in expired])
        for job in expired:
            if job.job_id in waiting:
                continue  # its webhook is still on its way: it goes once that is over
            total.add(await delete_job(job, store, storage, redis, settings))
        if len(expired) < 500:
            break
    return total


async def sweep_orphans(store: JobStore, storage: Storage, settings: Settings) -> Swept:
    """Files older than ``orphan_grace_s`` that name a job which does not exist (the grace keeps
    an upload stored just before its job is recorded)."""
    swept = Swept()
    cutoff: datetime = utcnow() - timedelta(seconds=settings.orphan_grace_s)
    async for key, stored in storage.entries():
        owner = _OWNER.match(key)
        if owner is None or stored > cutoff:
            continue
        job_id = owner.group("original") or owner.group("thumbnail")
        if await store.get(job_id) is None:
            await delete_files(storage, [key], swept)
    return swept
