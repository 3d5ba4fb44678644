"""An accepted job is never lost: workers killed mid-job, Redis and MongoDB going away, a publisher
that died between insert and publish, duplicate messages, and graceful shutdown.

Each test runs its own API and worker processes (and, where it stops one, its own Redis or
MongoDB-wire server) so it can break them without touching the rest of the suite.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from faststream.redis import RedisBroker
from redis.asyncio import Redis

from imgflow.core import lifecycle
from imgflow.core.jobs import Job, UploadSource, UrlSource, new_job_id, original_key
from imgflow.core.queue import read_backlog
from imgflow.core.settings import Settings
from imgflow.core.storage import make_storage
from imgflow.core.store import JobStore, connect
from imgflow.harness import images
from imgflow.harness.client import JOBS, Parts, api_client, submit, wait_finished, wait_status
from imgflow.harness.servers import (
    Server,
    free_port,
    mongodb_server,
    redis_server,
    wait_for_port,
    worker_server,
)
from tests.conftest import Processes, make_settings
from tests.sources import image_source


async def submit_url_job(settings: Settings, url: str) -> str:
    """A job whose source is a URL, accepted through the path the operator uses."""
    mongo = connect(settings)
    redis = Redis.from_url(settings.redis_url)
    try:
        db = mongo[settings.mongodb_database]
        job = Job(user_id="url-user", source=UrlSource(url=url))
        await lifecycle.accept(Parts(settings, JobStore(db), redis, make_storage(settings, db)), job)
        return job.job_id
    finally:
        await redis.aclose()
        await mongo.close()


@pytest.fixture
def url_settings(fresh_settings: Settings) -> Settings:
    return fresh_settings.model_copy(update={"allow_private_urls": True})


class Restartable:
    """A server of the test's own, on a fixed port and data directory, that can go away and return."""

    def __init__(self, make: Callable[[int], Server], data: Path | None = None) -> None:
        self.port = free_port()
        self._make = make
        self._data = data
        self._server: Server | None = None

    def start(self) -> None:
        self._server = self._make(self.port).start()
        wait_for_port(self.port, process=self._server.process)

    def stop(self, *, lose_data: bool = False) -> None:
        if self._server is not None:
            self._server.terminate()
        if lose_data and self._data is not None:
            shutil.rmtree(self._data)  # what a crash with the disk gone leaves


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Restartable]:
    redis = Restartable(lambda port: redis_server(tmp_path / "redis", port), tmp_path / "redis")
    redis.start()
    yield redis
    redis.stop()


@pytest.fixture
def own_mongo(tmp_path: Path) -> Iterator[tuple[Restartable, str]]:
    if os.environ.get("MONGODB_URL"):
        pytest.skip("needs a MongoDB-wire server this test can stop; MONGODB_URL points at an external one")

    def make(port: int) -> Server:
        server = mongodb_server(tmp_path / "mongo", port).server
        assert server is not None
        return server

    mongo = Restartable(make)
    mongo.start()
    yield mongo, f"mongodb://127.0.0.1:{mongo.port}"
    mongo.stop()


def assert_outage(response: httpx.Response, detail: str) -> None:
    """A backing service's outage as the API answers it: 503 problem details and a time to retry."""
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert int(response.headers["retry-after"]) >= 1
    assert detail in response.json()["detail"]


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(timeout=30) as c:
        yield c


async def test_a_worker_killed_mid_job_loses_nothing(
    processes: Processes, url_settings: Settings, client: httpx.AsyncClient
) -> None:
    settings = url_settings.model_copy(update={"claim_idle_ms": 2000})
    _, base = processes.start_api(settings)
    client.base_url = httpx.URL(base)
    doomed = processes.start_worker(settings)
    with image_source(images.jpeg(), hold_first=1) as source:
        job_id = await submit_url_job(settings, source.url)
        await wait_status(client, job_id, "processing")
        assert await asyncio.to_thread(source.arrived.wait, 30)  # its fetch hangs: mid-job
        doomed.kill()  # SIGKILL

        processes.start_worker(settings)  # takes the orphaned message over after claim_idle_ms
        job = await wait_finished(client, job_id)
    assert job["status"] == "completed", job
    assert source.requests == 2
    assert (await client.get(job["result"]["thumbnailUrl"])).status_code == 200
    # It was the only job on the killed worker: that death is blamed on it (the attempt rule).
    mongo = connect(settings)
    stored = await JobStore(mongo[settings.mongodb_database]).get(job_id)
    await mongo.close()
    assert stored is not None and (stored.crashes, stored.attempts, stored.isolate) == (1, 2, False)


async def test_redis_down_at_submit_is_503_and_nothing_is_kept(
    processes: Processes, mongodb_url: str, own_redis: Restartable, client: httpx.AsyncClient
) -> None:
    settings = make_settings(f"redis://127.0.0.1:{own_redis.port}/0", mongodb_url)
    _, base = processes.start_api(settings)
    first_worker = processes.start_worker(settings)
    client.base_url = httpx.URL(base)
    user = "redis-outage"

    own_redis.stop(lose_data=True)
    response = await submit(client, images.jpeg(), user_id=user)
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"]
    assert "nothing was kept" in response.json()["detail"]
    # a route that reads Redis without a word about outages is answered alike, by the API's handler
    letters = await client.get("/api/admin/dead-letters")
    assert_outage(letters, "Redis is unreachable; retry shortly.")
    assert (await client.get("/readyz")).status_code == 503
    assert (await client.get(f"/api/image-processing/users/{user}/jobs")).json() == {"jobs": []}
    mongo = connect(settings)
    files = await mongo[settings.mongodb_database]["files.files"].count_documents({})
    await mongo.close()
    assert files == 0, "the refused upload's original was left in storage"

    own_redis.start()  # back, and empty
    response = await submit(client, images.jpeg(), user_id=user)
    assert response.status_code == 202
    # The consumer group vanished with Redis's data; the worker notices it reads nothing any more
    # and starts again in place (same process), recreating the group: no supervisor needed.
    assert (await wait_finished(client, response.json()["jobId"]))["status"] == "completed"
    assert first_worker.alive, first_worker.tail()
    assert "restarting" in first_worker.tail(200)


async def test_a_worker_started_while_redis_is_down_waits_for_it(
    processes: Processes, mongodb_url: str, own_redis: Restartable, client: httpx.AsyncClient
) -> None:
    settings = make_settings(f"redis://127.0.0.1:{own_redis.port}/0", mongodb_url)
    _, base = processes.start_api(settings)
    client.base_url = httpx.URL(base)
    own_redis.stop()
    port = free_port()
    worker = worker_server(
        settings, processes.logs / "waiting-worker.log", {"IMGFLOW_WORKER_METRICS_PORT": str(port)}
    ).start()
    processes.started.append(worker)
    # however long it takes to start on a loaded machine, it says it waits, and keeps running
    for _ in range(120):
        assert worker.alive, worker.tail()  # it once exited with status 3
        if "Redis is not reachable" in worker.tail():
            break
        await asyncio.sleep(0.5)
    assert "Redis is not reachable" in worker.tail()
    await asyncio.sleep(1)
    assert worker.alive, worker.tail()
    own_redis.start()
    response = await submit(client, images.jpeg())
    assert response.status_code == 202, response.text
    assert (await wait_finished(client, response.json()["jobId"]))["status"] == "completed"


async def test_jobs_accepted_before_redis_lost_its_data_are_republished(
    processes: Processes, mongodb_url: str, own_redis: Restartable, client: httpx.AsyncClient
) -> None:
    settings = make_settings(
        f"redis://127.0.0.1:{own_redis.port}/0", mongodb_url, requeue_after_s=1.0, reconcile_interval_s=0.5
    )
    _, base = processes.start_api(settings)
    client.base_url = httpx.URL(base)
    accepted = [(await submit(client, images.jpeg(200, 150))).json()["jobId"] for _ in range(3)]
    own_redis.stop(lose_data=True)  # no worker ever saw them, and Redis comes back empty
    own_redis.start()
    processes.start_worker(settings)
    for job_id in accepted:
        assert (await wait_finished(client, job_id))["status"] == "completed"


async def test_a_redis_restart_keeps_the_queue(
    processes: Processes, mongodb_url: str, own_redis: Restartable, client: httpx.AsyncClient
) -> None:
    """Redis keeps an append-only file: queued jobs survive its restart without the reconciler."""
    settings = make_settings(f"redis://127.0.0.1:{own_redis.port}/0", mongodb_url, requeue_after_s=3600.0)
    _, base = processes.start_api(settings)
    client.base_url = httpx.URL(base)
    accepted = [(await submit(client, images.jpeg(200, 150))).json()["jobId"] for _ in range(3)]
    await asyncio.sleep(1.5)  # appendfsync everysec
    own_redis.stop()
    own_redis.start()
    processes.start_worker(settings)
    for job_id in accepted:
        assert (await wait_finished(client, job_id))["status"] == "completed"


async def test_a_job_whose_publisher_died_after_the_insert_is_republished(
    processes: Processes, fresh_settings: Settings, client: httpx.AsyncClient
) -> None:
    settings = fresh_settings.model_copy(update={"requeue_after_s": 1.0, "reconcile_interval_s": 0.5})
    # What an API process leaves when it dies between the MongoDB insert and the publish:
    mongo = connect(settings)
    db = mongo[settings.mongodb_database]
    job_id = new_job_id()
    job = Job(job_id=job_id, user_id="orphan", source=UploadSource(key=original_key(job_id)))
    await make_storage(settings, db).save_bytes(original_key(job_id), images.jpeg(), "image/jpeg")
    await JobStore(db).insert(job)
    await mongo.close()

    _, base = processes.start_api(settings)
    processes.start_worker(settings)
    client.base_url = httpx.URL(base)
    assert (await wait_finished(client, job.job_id))["status"] == "completed"


async def test_a_duplicate_message_never_moves_a_finished_job_back(
    processes: Processes, fresh_settings: Settings, client: httpx.AsyncClient
) -> None:
    _, base = processes.start_api(fresh_settings)
    processes.start_worker(fresh_settings)
    client.base_url = httpx.URL(base)
    job_id = (await submit(client, images.jpeg())).json()["jobId"]
    before = await wait_finished(client, job_id)

    mongo = connect(fresh_settings)
    job = await JobStore(mongo[fresh_settings.mongodb_database]).get(job_id)
    await mongo.close()
    assert job is not None
    broker = RedisBroker(fresh_settings.redis_url)
    await broker.connect()
    r = Redis.from_url(fresh_settings.redis_url)
    for _ in range(3):
        await lifecycle.republish(r, fresh_settings, [job])
    await broker.stop()
    # the backlog drains to zero once the duplicates are consumed and dropped
    for _ in range(300):
        if (await read_backlog(r, fresh_settings)).total == 0:
            break
        await asyncio.sleep(0.05)
    await r.aclose()
    after = (await client.get(f"{JOBS}/{job_id}")).json()
    assert after == before


async def test_sigterm_lets_a_running_job_finish(
    processes: Processes, url_settings: Settings, client: httpx.AsyncClient
) -> None:
    _, base = processes.start_api(url_settings)
    worker = processes.start_worker(url_settings)
    client.base_url = httpx.URL(base)
    with image_source(images.jpeg(), hold_first=1) as source:
        job_id = await submit_url_job(url_settings, source.url)
        await wait_status(client, job_id, "processing")
        assert await asyncio.to_thread(source.arrived.wait, 30)
        worker.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        await asyncio.sleep(1)  # the worker is draining now, its job still held back
        assert worker.alive
        source.release.set()
        code = await asyncio.to_thread(worker.terminate, 60)
    # a drained worker ends with 0 (uvicorn raises the SIGTERM again: imgflow.core.sigterm ends it)
    assert code == 0, worker.tail()
    assert "shut down gracefully" in worker.tail()
    assert (await client.get(f"{JOBS}/{job_id}")).json()["status"] == "completed"


async def test_what_a_stopping_worker_cannot_finish_goes_back_to_the_stream(
    processes: Processes, url_settings: Settings, client: httpx.AsyncClient
) -> None:
    # An hour of claim_idle: only the give-back on shutdown can get the job to another worker.
    settings = url_settings.model_copy(update={"claim_idle_ms": 3_600_000})
    _, base = processes.start_api(settings)
    hasty = processes.start_worker(settings, IMGFLOW_GRACEFUL_TIMEOUT_S="0.5")
    client.base_url = httpx.URL(base)
    with image_source(images.jpeg(), hold_first=1) as source:
        job_id = await submit_url_job(settings, source.url)
        await wait_status(client, job_id, "processing")
        assert await asyncio.to_thread(source.arrived.wait, 30)
        await asyncio.to_thread(hasty.terminate, 60)
        assert "returned 1 unfinished message" in hasty.tail(80), hasty.tail(80)
        assert (await client.get(f"{JOBS}/{job_id}")).json()["status"] == "pending"

        processes.start_worker(settings)
        job = await wait_finished(client, job_id)
    assert job["status"] == "completed", job
    assert source.requests == 2


async def test_mongodb_down_while_a_job_waits_delays_it_but_loses_nothing(
    processes: Processes, redis_url: str, own_mongo: tuple[Restartable, str], client: httpx.AsyncClient
) -> None:
    mongo, mongodb_url = own_mongo
    settings = make_settings(redis_url, mongodb_url, claim_idle_ms=2000)
    _, base = processes.start_api(settings)
    client.base_url = httpx.URL(base)
    job_id = (await submit(client, images.jpeg())).json()["jobId"]
    mongo.stop()
    worker = processes.start_worker(settings)  # takes the message; cannot record anything
    await asyncio.sleep(3)
    assert worker.alive, worker.tail()
    mongo.start()
    assert (await wait_finished(client, job_id))["status"] == "completed"


async def test_mongodb_down_is_503_on_a_route_without_an_except_of_its_own(
    processes: Processes, redis_url: str, own_mongo: tuple[Restartable, str], client: httpx.AsyncClient
) -> None:
    mongo, mongodb_url = own_mongo
    _, base = processes.start_api(make_settings(redis_url, mongodb_url, mongodb_timeout_s=2.0))
    client.base_url = httpx.URL(base)
    assert (await client.get("/api/admin/keys")).status_code == 200
    mongo.stop()
    assert_outage(await client.get("/api/admin/keys"), "MongoDB")


async def test_jobs_accepted_before_any_worker_started_are_not_skipped(
    processes: Processes, fresh_settings: Settings, client: httpx.AsyncClient
) -> None:
    # The reconciler is kept out of it (an hour): only the consumer group's start position counts.
    settings = fresh_settings.model_copy(update={"requeue_after_s": 3600.0})
    _, base = processes.start_api(settings)
    client.base_url = httpx.URL(base)
    waiting = [(await submit(client, images.jpeg(160, 120))).json()["jobId"] for _ in range(3)]
    processes.start_worker(settings)
    for job_id in waiting:
        assert (await wait_finished(client, job_id))["status"] == "completed"
