"""One job's keys in Redis and the commands that write them: what goes with each change of a job
besides its MongoDB record. imgflow.core.lifecycle queues these on one pipeline per transition.

What is not about one job's life stays with its concept and reads what is written here: the
change feed that followers read (imgflow.core.events).
"""

from __future__ import annotations

from redis.asyncio.client import Pipeline

from imgflow.core.jobs import JobStatus
from imgflow.core.settings import Settings

# A job's announcements: a short stream per job, a notification (the job in MongoDB is the truth)
KEEP_ENTRIES = 20
KEEP_SECONDS = 3600


def events_key(settings: Settings, job_id: str) -> str:
    return f"{settings.stream}:events:{job_id}"


def announce(pipe: Pipeline, settings: Settings, job_id: str, status: JobStatus) -> None:
    """Queue the change's announcement on ``pipe``: followers of the job are told."""
    key = events_key(settings, job_id)
    pipe.xadd(key, {"status": status.value}, maxlen=KEEP_ENTRIES, approximate=True)
    pipe.expire(key, KEEP_SECONDS)
