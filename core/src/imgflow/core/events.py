"""A job's status changes as a short Redis stream per job, for live progress (Server-Sent Events).

Whoever changes a job's status (imgflow.core.lifecycle: the API accepting it, the worker starting,
retrying, finishing it) appends an entry (imgflow.core.jobkeys.announce); an API replica serving
``GET .../jobs/{id}/events`` reads them, so a client may follow a job from any replica, and resume
after a dropped connection from the last entry id it saw (``Last-Event-ID``). The stream holds only
the latest few entries and expires an hour after the last change: it is a notification, the job in
MongoDB is the truth.

An API process reads the streams of every job it has followers of with one blocking XREAD on one
connection (``ChangeFeed``): a follower costs a queue entry, not a Redis connection. A follower of
a job not in the read under way, or of one the read asks only for later changes of (a client
resuming from an earlier Last-Event-ID), wakes the read (an entry on the feed's own wake stream,
which every read names too), so it is read from at once rather than after the block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.typing import KeyT, StreamIdT

from imgflow.core.jobkeys import KEEP_ENTRIES, KEEP_SECONDS, events_key
from imgflow.core.settings import Settings

log = logging.getLogger(__name__)
# How long one read blocks when nothing changes (a newcomer wakes it): under the API's Redis socket
# timeout (5 s).
FEED_BLOCK_MS = 2000
# ms-seq, as Redis writes them, or ms alone; each part a 64-bit unsigned integer
_ENTRY_ID = re.compile(r"^(\d{1,20})(?:-(\d{1,20}))?$")
_MAX_PART = 2**64 - 1


def entry_order(entry_id: str) -> tuple[int, int] | None:
    """An entry id as (ms, seq) to compare, or None if Redis would refuse it as a stream id."""
    found = _ENTRY_ID.match(entry_id)
    if found is None:
        return None
    ms, seq = int(found[1]), int(found[2] or 0)
    return (ms, seq) if ms <= _MAX_PART and seq <= _MAX_PART else None


def _order(entry_id: str) -> tuple[int, int]:
    order = entry_order(entry_id)
    assert order is not None, entry_id  # ids come from Redis or were checked on the way in
    return order


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(eq=False)
class Follower:
    """One client following one job: ``changed`` is set when a change after ``after`` was read, and
    ``after`` is then the latest change's id."""

    job_id: str
    after: str
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class ChangeFeed:
    """The changes of every job followed on this process, read by one XREAD on one connection.

    ``run`` is the process's only reader. The set of followed jobs changes as followers come and
    go; a read blocks at most ``block_ms``, and one that would not answer a newcomer (its job not
    named, or named from a later change than the newcomer's) is woken (``redis`` needs a second
    connection for the wake while the read holds one).
    """

    def __init__(self, redis: Redis, settings: Settings, *, block_ms: int = FEED_BLOCK_MS) -> None:
        self._redis = redis
        # reads hold one connection of their own, wakes take another from the pool: the follower
        # count of a replica stays one blocked connection (tests/test_streams.py counts them)
        self._reader = redis.client()
        self._settings = settings
        self._block_ms = block_ms
        self._followers: dict[str, set[Follower]] = {}
        self._joined = asyncio.Event()
        self._wake_key = f"{settings.stream}:feed-wake:{uuid.uuid4().hex}"
        self._woken_after = "0"
        self._reading: dict[str, str] = {}  # the read under way's jobs, each from which change
        self._wakes: set[asyncio.Task[None]] = set()

    @contextlib.contextmanager
    def follow(self, job_id: str, after: str) -> Iterator[Follower]:
        """Follow ``job_id``'s changes after ``after`` ("0": all kept) for the block."""
        follower = Follower(job_id, after)
        self._followers.setdefault(job_id, set()).add(follower)
        self._joined.set()
        reading = self._reading.get(job_id)
        if self._reading and (reading is None or _order(after) < _order(reading)):
            self._reading[job_id] = after  # one wake per newcomer the read under way misses
            wake = asyncio.get_running_loop().create_task(self._wake())
            self._wakes.add(wake)
            wake.add_done_callback(self._wakes.discard)
        try:
            yield follower
        finally:
            followers = self._followers[job_id]
            followers.discard(follower)
            if not followers:
                del self._followers[job_id]

    async def run(self) -> None:
        """Read until cancelled; a failed read is logged and tried again a second later (followers
        see heartbeats meanwhile)."""
        while True:
            if not self._followers:
                self._joined.clear()
                await self._joined.wait()
                continue
            try:
                await self._read()
            except Exception:
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # redis-py turns a cancelled read into
                    raise asyncio.CancelledError from None  # a TimeoutError: stop, as asked
                log.warning("reading the followed jobs' changes failed; retrying", exc_info=True)
                await asyncio.sleep(1)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._redis.delete(self._wake_key)
        await self._reader.aclose()
        await self._redis.aclose()

    async def _wake(self) -> None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self._wake_key, {"wake": 1}, maxlen=1)
                pipe.expire(self._wake_key, KEEP_SECONDS)  # a process that dies leaves nothing long
                await pipe.execute()
        except Exception:  # the newcomer is read after the block instead
            log.warning("waking the change feed failed", exc_info=True)

    async def _read(self) -> None:
        jobs = {events_key(self._settings, job_id): job_id for job_id in self._followers}
        # from the earliest change a follower of the job has not had
        after: dict[KeyT, StreamIdT] = {
            key: min((f.after for f in self._followers[job_id]), key=_order) for key, job_id in jobs.items()
        }
        self._reading = {job_id: str(after[key]) for key, job_id in jobs.items()}
        # a wake sent after this point, even before Redis has the read, ends the read at once
        after[self._wake_key] = self._woken_after
        try:
            found: Any = await self._reader.xread(after, block=self._block_ms, count=KEEP_ENTRIES)
        finally:
            self._reading = {}
        # [[stream, entries]] in RESP2, {stream: [entries]} in RESP3
        streams = found.items() if isinstance(found, dict) else (found or [])
        for key, entries in streams:
            if not entries:
                continue
            latest = _text(entries[-1][0])
            if _text(key) == self._wake_key:
                self._woken_after = latest
                continue
            for follower in self._followers.get(jobs[_text(key)], ()):
                if _order(latest) > _order(follower.after):
                    follower.after = latest
                    follower.changed.set()


async def last_change(redis: Redis, settings: Settings, job_id: str) -> str:
    """Id of the latest change kept, or "0" when there is none."""
    last = await redis.xrevrange(events_key(settings, job_id), count=1)
    if not last:
        return "0"
    entry_id = last[0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
