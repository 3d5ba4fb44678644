"""Jobs that wait: the retry schedule (a sorted set of jobs due again at a time) and the dead
letters (a stream of jobs that failed after their last retry, for an operator to send back). Beside
the job stream of imgflow.core.queue; written by imgflow.core.lifecycle.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from imgflow.core.settings import Settings


def retry_key(settings: Settings) -> str:
    """The Redis sorted set of jobs waiting for a retry, scored by when it is due (epoch s)."""
    return f"{settings.stream}:retry"


def dead_letter_key(settings: Settings) -> str:
    """The Redis stream of jobs that failed after their last retry (fields: job_id, error)."""
    return f"{settings.stream}:dead"


# Take the due members atomically, so that each is handled by one process only.
_TAKE_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
return due
"""


async def take_due(redis: Redis, schedule: str, now: float, limit: int) -> list[str]:
    """Remove and return the members of the sorted set ``schedule`` scored at or before ``now``
    (job retries here, webhook retries in the API): each is taken by one process only."""
    due: list[bytes] = await redis.eval(_TAKE_DUE, 1, schedule, now, limit)
    return [member.decode() for member in due]


async def take_due_retries(redis: Redis, settings: Settings, now: float, limit: int = 500) -> list[str]:
    """Remove and return the jobs whose retry is due. A process dying before it publishes them
    leaves them to the reconciler (unfinished, no message, due)."""
    return await take_due(redis, retry_key(settings), now, limit)


@dataclass(frozen=True)
class DeadLetter:
    entry_id: str
    job_id: str
    error: str


async def dead_letters(
    redis: Redis, settings: Settings, *, after: str | None, limit: int
) -> list[DeadLetter]:
    """Oldest first, from after the entry id ``after``."""
    found = await redis.xrange(dead_letter_key(settings), min=f"({after}" if after else "-", count=limit)
    letters = []
    for entry_id, fields in found or []:
        values = {_text(k): _text(v) for k, v in (fields or {}).items()}
        letters.append(DeadLetter(_text(entry_id or b""), values.get("job_id", ""), values.get("error", "")))
    return letters


async def remove_dead_letters(redis: Redis, settings: Settings, job_id: str) -> int:
    """Remove every dead letter of ``job_id`` (a scan of the dead-letter stream, which stays small:
    operators drain it); returns how many."""
    removed = 0
    after = None
    while page := await dead_letters(redis, settings, after=after, limit=500):
        ids = [letter.entry_id for letter in page if letter.job_id == job_id]
        if ids:
            removed += int(await redis.xdel(dead_letter_key(settings), *ids))
        if len(page) < 500:
            break
        after = page[-1].entry_id
    return removed


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
