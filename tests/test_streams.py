"""Live-progress streams cannot take a replica down: one Redis connection serves every follower of an
API process, streams are capped per key and per replica, a revoked key's streams end, and a
Last-Event-ID Redis could not read is refused."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
from redis.asyncio import Redis

from imgflow.core.events import ChangeFeed, last_change
from imgflow.core.jobkeys import announce
from imgflow.core.jobs import JobStatus
from imgflow.core.settings import Settings
from imgflow.harness import images
from imgflow.harness.client import JOBS, api_client, make_key, submit
from tests.conftest import Processes
from tests.test_progress import Event, events

READ, WRITE = "jobs:read", "jobs:write"


async def follow(client: httpx.AsyncClient, job_id: str, opened: Callable[[], None]) -> list[Event]:
    """Follow a job to the end of its stream; ``opened`` is called on the first event."""
    seen: list[Event] = []
    async with client.stream("GET", f"{JOBS}/{job_id}/events") as response:
        assert response.status_code == 200, (await response.aread()).decode()
        async for event in events(response):
            if event is None:
                continue
            seen.append(event)
            if len(seen) == 1:
                opened()
    return seen


class Opened:
    """Counts streams that got their first event; ``wait(n)`` until ``n`` have."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Event()

    def __call__(self) -> None:
        self.count += 1
        self._changed.set()

    async def wait(self, n: int) -> None:
        async with asyncio.timeout(120):  # only stops a hung test
            while self.count < n:
                self._changed.clear()
                await self._changed.wait()


async def blocking_readers(redis: Redis) -> int:
    """Connections whose last command was XREAD: the API's followers (workers use XREADGROUP)."""
    return sum(1 for client in await redis.client_list() if client.get("cmd") == "xread")


async def refusal(client: httpx.AsyncClient, job_id: str, status: int, **headers: str) -> httpx.Response:
    """A request for ``job_id``'s events that must be refused with ``status``, as problem details
    (a stream, should one be opened instead, is closed at once rather than read)."""
    async with client.stream("GET", f"{JOBS}/{job_id}/events", headers=headers) as response:
        assert response.status_code == status, response.headers
        assert response.headers["content-type"] == "application/problem+json"
        await response.aread()
    return response


async def test_150_followers_share_one_redis_connection_and_the_replica_keeps_serving(
    processes: Processes, fresh_settings: Settings
) -> None:
    _, base = processes.start_api(fresh_settings)
    keys, per_key = 10, 15
    async with api_client(base, timeout=60) as admin:
        tenant_keys = [await make_key(admin, f"t{n}", READ, WRITE) for n in range(keys)]
        other = await make_key(admin, "other", READ, WRITE)
        clients = [api_client(base, key=key, timeout=60) for key in tenant_keys]
        redis = Redis.from_url(fresh_settings.redis_url)
        try:
            # other API processes of the session whose streams ended keep a connection whose last
            # command was a read: this replica's followers add exactly one
            others = await blocking_readers(redis)
            # no worker yet: every job waits, pending, with its followers on it
            job_ids = []
            for client in clients:
                accepted = await submit(client, images.jpeg(64, 48))
                assert accepted.status_code == 202, accepted.text
                job_ids.append(accepted.json()["jobId"])
            opened = Opened()
            followers = [
                asyncio.create_task(follow(client, job_id, opened))
                for client, job_id in zip(clients, job_ids, strict=True)
                for _ in range(per_key)
            ]
            await opened.wait(keys * per_key)
            assert await blocking_readers(redis) == others + 1

            # another tenant, and the probe, are served meanwhile
            async with api_client(base, key=other, timeout=60) as client:
                accepted = await submit(client, images.jpeg(64, 48))
                assert accepted.status_code == 202, accepted.text
                got = await client.get(f"{JOBS}/{accepted.json()['jobId']}")
                assert got.status_code == 200, got.text
            ready = await admin.get("/readyz")
            assert ready.status_code == 200, ready.text

            processes.start_worker(fresh_settings)
            async with asyncio.timeout(180):  # only stops a hung test
                seen = await asyncio.gather(*followers)
            for job_id, stream in zip([j for j in job_ids for _ in range(per_key)], seen, strict=True):
                assert all(event.job["jobId"] == job_id for event in stream)
                assert stream[-1].job["status"] == "completed", [e.job["status"] for e in stream]
        finally:
            for client in clients:
                await client.aclose()
            await redis.aclose()


@contextlib.asynccontextmanager
async def following(client: httpx.AsyncClient, job_id: str) -> AsyncIterator[asyncio.Task[list[Event]]]:
    """A stream open on ``job_id`` for the block (its first event received), closed at its end."""
    opened = Opened()
    task = asyncio.create_task(follow(client, job_id, opened))
    first = asyncio.create_task(opened.wait(1))
    try:
        await asyncio.wait({task, first}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # the stream's failure, if it failed
        yield task
    finally:
        first.cancel()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def test_streams_are_capped_per_key_and_per_replica(
    processes: Processes, fresh_settings: Settings
) -> None:
    settings = fresh_settings.model_copy(update={"max_streams_per_key": 2, "max_streams": 3})
    _, base = processes.start_api(settings)
    async with api_client(base, timeout=60) as admin:
        first, second = [await make_key(admin, "capped", READ, WRITE) for _ in range(2)]
        async with (
            api_client(base, key=first, timeout=60) as one,
            api_client(base, key=second, timeout=60) as two,
        ):
            job_id = (await submit(one, images.jpeg(64, 48))).json()["jobId"]
            async with following(one, job_id), following(one, job_id) as closing:
                refused = await refusal(one, job_id, 429)
                assert int(refused.headers["retry-after"]) >= 1
                assert "2 live-progress streams" in refused.json()["detail"]
                # another key may still follow, up to the replica's cap
                async with following(two, job_id):
                    refused = await refusal(two, job_id, 429)
                    assert int(refused.headers["retry-after"]) >= 1
                closing.cancel()
                # a closed stream gives its place back
                async with asyncio.timeout(60):  # only stops a hung test
                    while True:
                        with contextlib.suppress(AssertionError):
                            async with following(one, job_id):
                                break
                        await asyncio.sleep(0.2)


async def test_a_revoked_keys_streams_end(processes: Processes, fresh_settings: Settings) -> None:
    _, base = processes.start_api(fresh_settings)
    async with api_client(base, timeout=60) as admin:
        doomed = await make_key(admin, "revoked", READ, WRITE)
        async with api_client(base, key=doomed, timeout=60) as client:
            job_id = (await submit(client, images.jpeg(64, 48))).json()["jobId"]
            async with following(client, job_id) as stream, following(admin, job_id) as kept:
                assert (await admin.delete(f"/api/admin/keys/{doomed.split('_')[1]}")).status_code == 204
                async with asyncio.timeout(60):  # only stops a hung test
                    ended = await stream
                assert [event.job["status"] for event in ended] == ["pending"]
                assert not kept.done()  # the admin's stream of the same job goes on


async def test_a_last_event_id_redis_cannot_read_is_a_400_problem(
    processes: Processes, fresh_settings: Settings
) -> None:
    _, base = processes.start_api(fresh_settings)
    async with api_client(base, timeout=60) as client:
        job_id = (await submit(client, images.jpeg(64, 48))).json()["jobId"]
        for bad in (f"{2**64 + 1}-0", f"0-{2**64}", "1-2-3", "x"):
            response = await refusal(client, job_id, 400, **{"Last-Event-ID": bad})
            assert "Last-Event-ID" in response.json()["detail"]
        # the largest id Redis can hold is a valid one: the stream answers (and the job goes on)
        async with client.stream(
            "GET", f"{JOBS}/{job_id}/events", headers={"Last-Event-ID": f"{2**64 - 1}-0"}
        ) as response:
            assert response.status_code == 200


@contextlib.asynccontextmanager
async def blocked_feed(
    settings: Settings,
) -> AsyncIterator[tuple[ChangeFeed, Redis, Callable[[], Awaitable[None]]]]:
    """A change feed whose reads block for two minutes, a Redis client, and a wait until the
    feed's read is under way (its connection, by name, running XREAD)."""
    redis = Redis.from_url(settings.redis_url)
    # no socket timeout: redis-py's default (5 s) would end the two minutes' read early
    name = f"feed-{uuid.uuid4().hex}"  # other tests' API processes read on the same Redis
    reader_redis = Redis.from_url(settings.redis_url, socket_timeout=None, client_name=name)
    feed = ChangeFeed(reader_redis, settings, block_ms=120_000)
    reader = asyncio.create_task(feed.run())

    async def reading() -> None:
        async with asyncio.timeout(30):  # only stops a hung test
            while True:
                clients = await redis.client_list()
                if any(c.get("name") == name and c.get("cmd") == "xread" for c in clients):
                    return
                await asyncio.sleep(0.05)

    try:
        yield feed, redis, reading
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await feed.aclose()
        await redis.aclose()


async def announced(redis: Redis, settings: Settings, job_id: str, status: JobStatus) -> None:
    async with redis.pipeline(transaction=False) as pipe:
        announce(pipe, settings, job_id, status)
        await pipe.execute()


async def test_a_follower_of_a_new_job_is_read_at_once_not_after_the_feeds_blocking_read(
    fresh_settings: Settings,
) -> None:
    """The feed blocks on the jobs followed when its read began; a follower of another job wakes
    it, so that job's change reaches it at once (here the read would block for two minutes)."""
    async with blocked_feed(fresh_settings) as (feed, redis, reading):
        with feed.follow("job-a", "0"):
            await reading()  # the feed's read of job-a is under way
            with feed.follow("job-b", "0") as newcomer:
                await announced(redis, fresh_settings, "job-b", JobStatus.completed)
                async with asyncio.timeout(30):  # the block is 120 s: a feed not woken fails here
                    await newcomer.changed.wait()


async def test_a_follower_resuming_a_job_the_feed_reads_from_later_gets_its_change_at_once(
    fresh_settings: Settings,
) -> None:
    """A second follower of a job the read under way names, asking from an earlier change (a
    client resuming with Last-Event-ID), gets that change at once, not after the block: the read
    only answers changes after the first follower's position."""
    async with blocked_feed(fresh_settings) as (feed, redis, reading):
        await announced(redis, fresh_settings, "job-a", JobStatus.pending)
        latest = await last_change(redis, fresh_settings, "job-a")
        with feed.follow("job-a", latest) as first:
            await reading()  # reading job-a after its one change
            with feed.follow("job-a", "0") as resuming:
                async with asyncio.timeout(30):  # the block is 120 s: a feed not woken fails here
                    await resuming.changed.wait()
                assert resuming.after == latest
            assert not first.changed.is_set()  # it had that change already
