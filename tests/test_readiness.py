"""Ready means serving: the API's /readyz and the worker's answer 200 only while MongoDB, Redis and
the storage answer, and say which one does not (a rollout, `helm --wait` and `make deploy` wait
on these probes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from imgflow.core.readiness import FRESH_S
from imgflow.core.settings import Settings
from imgflow.harness.servers import S3Server, free_port, redis_server
from tests.conftest import Processes, make_settings, on_s3
from tests.test_failures import Restartable

PROCESSES = ("api", "worker")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Restartable]:
    """A Redis of the test's own: its counters count this test's commands alone, and it can stop."""
    redis = Restartable(lambda port: redis_server(tmp_path / "redis", port))
    redis.start()
    yield redis
    redis.stop()


def start(processes: Processes, settings: Settings, process: str) -> str:
    """Start the API or a worker on ``settings``; the base URL of its /readyz."""
    if process == "api":
        return processes.start_api(settings)[1]
    worker = processes.start_worker(settings)
    return f"http://127.0.0.1:{worker.env['IMGFLOW_WORKER_METRICS_PORT']}"


def answer(reply: httpx.Response) -> tuple[int, dict[str, Any]]:
    """A /readyz reply's status and its checks."""
    json = reply.headers.get("content-type", "").startswith("application/json")
    body = reply.json() if json else {"text": reply.text}
    return reply.status_code, body.get("checks", body)


def readiness(processes: Processes, settings: Settings) -> dict[str, tuple[int, dict[str, Any]]]:
    """The API's and the worker's /readyz: status and checks."""
    bases = {process: start(processes, settings, process) for process in PROCESSES}
    return {process: answer(httpx.get(f"{base}/readyz", timeout=30)) for process, base in bases.items()}


def test_api_and_worker_are_ready_while_mongodb_redis_and_the_storage_answer(
    processes: Processes, fresh_settings: Settings, s3: S3Server
) -> None:
    everything = {"mongodb": "ok", "redis": "ok", "storage": "ok"}
    assert readiness(processes, on_s3(fresh_settings, s3)) == {
        "api": (200, everything),
        "worker": (200, everything),
    }


def test_api_and_worker_are_not_ready_while_the_storage_does_not_answer(
    processes: Processes, fresh_settings: Settings, s3: S3Server
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # loopback, nothing listening
    settings = on_s3(fresh_settings, s3, s3_endpoint=nowhere, s3_timeout_s=1.0)
    for name, (status, checks) in readiness(processes, settings).items():
        assert status == 503, (name, checks)
        assert checks["storage"].startswith("unreachable"), (name, checks)
        assert (checks["mongodb"], checks["redis"]) == ("ok", "ok"), (name, checks)


async def pings(settings: Settings) -> dict[str, int]:
    """The PING commands Redis and MongoDB have answered so far, by the servers' own counters."""
    redis = Redis.from_url(settings.redis_url)
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_url)
    try:
        commands = await redis.info("commandstats")
        status = await mongo.admin.command("serverStatus")
    finally:
        await redis.aclose()
        await mongo.close()
    return {
        "redis": int(commands.get("cmdstat_ping", {}).get("calls", 0)),
        "mongodb": int(status["metrics"]["commands"].get("ping", {}).get("total", 0)),
    }


PROBES = 64


@pytest.mark.parametrize("process", PROCESSES)
async def test_a_flood_of_probes_asks_each_backend_at_most_once_per_freshness_window(
    process: str, processes: Processes, mongodb_url: str, own_redis: Restartable
) -> None:
    """A probe answers from the last check while it is fresh, and probes arriving together share
    one check: many probes at once (a kubelet, a load balancer and a curious client) cost MongoDB
    and Redis one ping per FRESH_S, not one per probe, and cannot pile up on the backends."""
    settings = make_settings(f"redis://127.0.0.1:{own_redis.port}/0", mongodb_url)
    base = start(processes, settings, process)
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        assert answer(await client.get("/readyz"))[0] == 200
        before = await pings(settings)
        began = time.monotonic()
        replies = await asyncio.gather(*(client.get("/readyz") for _ in range(PROBES)))
        # checks start at least FRESH_S apart: this many fit in the flood's time
        windows = int((time.monotonic() - began) / FRESH_S) + 1
        after = await pings(settings)
    assert [r.status_code for r in replies] == [200] * PROBES
    asked = {backend: after[backend] - before[backend] for backend in after}
    assert all(n <= windows for n in asked.values()), (
        f"{asked} pings for {PROBES} probes in {windows} windows"
    )


async def test_api_and_worker_are_not_ready_while_redis_is_stopped(
    processes: Processes, mongodb_url: str, own_redis: Restartable
) -> None:
    settings = make_settings(f"redis://127.0.0.1:{own_redis.port}/0", mongodb_url)
    bases = {process: start(processes, settings, process) for process in PROCESSES}
    own_redis.stop()
    await asyncio.sleep(FRESH_S)  # the last check, made while Redis answered, is stale now
    async with httpx.AsyncClient(timeout=30) as client:
        for process, base in bases.items():
            status, checks = answer(await client.get(f"{base}/readyz"))
            assert status == 503, (process, checks)
            assert checks["redis"].startswith("unreachable"), (process, checks)
            assert (checks["mongodb"], checks["storage"]) == ("ok", "ok"), (process, checks)
