"""A job's status changes as a short Redis stream per job, for live progress (Server-Sent Events).

Whoever changes a job's status (the API accepting it, the worker starting, retrying, finishing it)
appends an entry; an API replica serving ``GET .../jobs/{id}/events`` reads them with a blocking
XREAD, so a client may follow a job from any replica, and resume after a dropped connection from
the last entry id it saw (``Last-Event-ID``). The stream holds only the latest few entries and
expires an hour after the last change: it is a notification, the job in MongoDB is the truth.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from imgflow.core.jobs import JobStatus
from imgflow.core.settings import Settings

log = logging.getLogger(__name__)
KEEP_ENTRIES = 20
KEEP_SECONDS = 3600


def events_key(settings: Settings, job_id: str) -> str:
    return f"{settings.stream}:events:{job_id}"


def announce(pipe: Pipeline, settings: Settings, job_id: str, status: JobStatus) -> None:
    """Queue the change's announcement on ``pipe`` (to send it with other commands at once)."""
    key = events_key(settings, job_id)
    pipe.xadd(key, {"status": status.value}, maxlen=KEEP_ENTRIES, approximate=True)
    pipe.expire(key, KEEP_SECONDS)


async def job_changed(redis: Redis, settings: Settings, job_id: str, status: JobStatus) -> None:
    """Tell followers the job changed; a failure only delays them until their next heartbeat."""
    try:
        async with redis.pipeline(transaction=False) as pipe:
            announce(pipe, settings, job_id, status)
            await pipe.execute()
    except Exception:
        log.warning("could not announce job %s %s", job_id, status.value, exc_info=True)


async def next_changes(redis: Redis, settings: Settings, job_id: str, after: str, block_ms: int) -> list[str]:
    """Entry ids of the changes after ``after`` ("0": all kept), waiting up to ``block_ms``."""
    found: Any = await redis.xread({events_key(settings, job_id): after}, block=block_ms, count=KEEP_ENTRIES)
    # [[stream, entries]] in RESP2, {stream: [entries]} in RESP3
    streams = found.items() if isinstance(found, dict) else (found or [])
    ids: list[str] = []
    for _stream, entries in streams:
        for entry_id, _fields in entries:
            ids.append(entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id))
    return ids


async def last_change(redis: Redis, settings: Settings, job_id: str) -> str:
    """Id of the latest change kept, or "0" when there is none."""
    last = await redis.xrevrange(events_key(settings, job_id), count=1)
    if not last:
        return "0"
    entry_id = last[0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
