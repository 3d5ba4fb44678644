"""The stream stays small on a real Redis: consumers of workers that are gone are removed, and
entries every group has acknowledged are trimmed; nothing a worker still needs is touched."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import Redis

from imgflow.core.queue import ensure_group, read_backlog, tidy_queue, worker_key
from imgflow.core.settings import Settings


async def take(redis: Redis, s: Settings, consumer: str, count: int) -> list[bytes]:
    """XREADGROUP as ``consumer``: the ids of the entries it now holds."""
    raw: Any = await redis.xreadgroup(s.consumer_group, consumer, {s.stream: ">"}, count=count)
    return [entry_id for entry_id, _ in raw[0][1]]


async def test_tidy_keeps_what_is_needed_and_drops_the_rest(fresh_settings: Settings) -> None:
    s = fresh_settings.model_copy(update={"claim_idle_ms": 1000})
    redis = Redis.from_url(s.redis_url)
    try:
        await ensure_group(redis, s)
        for i in range(10):
            await redis.xadd(s.stream, {"n": str(i)})
        # "crashed" took 4 and acknowledged 2: two are pending on it, waiting to be reclaimed.
        ids = await take(redis, s, "crashed", 4)
        await redis.xack(s.stream, s.consumer_group, ids[0], ids[1])
        # "finished" took 3 and acknowledged them all, then its worker went away.
        await redis.xack(s.stream, s.consumer_group, *await take(redis, s, "finished", 3))
        # "idle" is a live worker with nothing to do: its heartbeat key is there.
        await redis.xgroup_createconsumer(s.stream, s.consumer_group, "idle")
        await redis.set(worker_key(s, "idle"), "{}", ex=60)
        await asyncio.sleep(1.2)  # every consumer idle for longer than claim_idle_ms

        tidied = await tidy_queue(redis, s)

        consumers = {c["name"].decode() for c in await redis.xinfo_consumers(s.stream, s.consumer_group)}
        assert consumers == {"crashed", "idle"}
        assert tidied.consumers_removed == 1
        # Entries before the oldest pending one (ids[2]) are gone; it and everything after stay.
        entries: Any = await redis.xrange(s.stream)
        remaining = [entry_id for entry_id, _ in entries]
        assert remaining[0] == ids[2] and len(remaining) == 8
        assert tidied.entries_trimmed == 2
        backlog = await read_backlog(redis, s)
        assert (backlog.lag, backlog.pending) == (3, 2)  # the 3 never delivered, the 2 pending
    finally:
        await redis.delete(s.stream, worker_key(s, "idle"))
        await redis.aclose()


async def test_tidy_without_a_stream_does_nothing(fresh_settings: Settings) -> None:
    redis = Redis.from_url(fresh_settings.redis_url)
    try:
        tidied = await tidy_queue(redis, fresh_settings)
        assert (tidied.consumers_removed, tidied.entries_trimmed) == (0, 0)
    finally:
        await redis.aclose()
