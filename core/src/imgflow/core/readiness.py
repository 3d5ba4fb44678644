"""Readiness: each backend a process needs for its work, asked now: "ok" or "unreachable: <why>".

The API's /readyz and the worker's ask the same three: MongoDB, Redis and the storage. Ready then
means serving (an upload can be recorded, stored and queued; a job can be read, processed and
written), so a rollout, ``helm --wait`` and ``make deploy`` wait for that, not only for the process.

Both ask through a Readiness: on connections no request or job can take (a ping through the
process's pools would wait behind its work, and a replica whose pools were exhausted would leave
its Service), MongoDB through a client of its own with a pool of one (a real round trip: a client's
server state only says what its monitor saw at its last heartbeat, up to 10 s ago). Checks are
shared: however many probes arrive at once, one check runs per FRESH_S, so flooding /readyz (the
API's is unauthenticated) costs the backends nothing more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

from pymongo import AsyncMongoClient
from redis.asyncio import BlockingConnectionPool, Redis

from imgflow.core.backends import REDIS_CONNECT_TIMEOUT_S, REDIS_SOCKET_TIMEOUT_S, reconnect_once
from imgflow.core.settings import Settings
from imgflow.core.storage import NotFound, Storage, make_storage

CHECK_TIMEOUT_S = 3.0
FRESH_S = 1.0
# No file is stored under this key (local storage refuses '/' and a leading '.'): a storage that
# answers "not found" for it answers.
PROBE_KEY = "readiness-probe"


async def answers(check: Awaitable[object]) -> str:
    try:
        await asyncio.wait_for(check, timeout=CHECK_TIMEOUT_S)
    except Exception as exc:
        return f"unreachable: {type(exc).__name__}"
    return "ok"


async def _stat_probe(storage: Storage) -> None:
    with contextlib.suppress(NotFound):
        await storage.stat(PROBE_KEY)


async def prepare_storage(storage: Storage, log: logging.Logger) -> None:
    """Ask the storage once, as a process starts: an S3 client is made on first use, and making
    it (botocore's models) took 3-4 s of a loaded node, paid by the first upload after a start
    (the first ``helm test`` after a node restart timed out on it). A storage that does not answer
    yet is logged; the client is made all the same, and /readyz says the rest."""
    try:
        await _stat_probe(storage)
    except Exception as exc:
        log.warning("the storage does not answer yet (%s); /readyz will say so", exc)


async def checks(mongo: AsyncMongoClient[Any], redis: Redis, storage: Storage) -> dict[str, str]:
    """MongoDB, Redis and the storage, asked at once."""
    mongodb, redis_state, storage_state = await asyncio.gather(
        answers(mongo.admin.command("ping")), answers(redis.ping()), answers(_stat_probe(storage))
    )
    return {"mongodb": mongodb, "redis": redis_state, "storage": storage_state}


class Readiness:
    """A process's readiness checks on connections of their own; ``name`` names its Redis
    connection (CLIENT LIST shows ``name``)."""

    def __init__(self, settings: Settings, name: str, log: logging.Logger) -> None:
        pool = BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=1,
            timeout=CHECK_TIMEOUT_S,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
            client_name=name,
            retry=reconnect_once(),
        )
        self._redis = Redis.from_pool(pool)
        self._mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongodb_url,
            maxPoolSize=1,
            serverSelectionTimeoutMS=int(CHECK_TIMEOUT_S * 1000),
            waitQueueTimeoutMS=int(CHECK_TIMEOUT_S * 1000),
        )
        self._storage = make_storage(settings, self._mongo[settings.mongodb_database])
        self._log = log
        self._lock = asyncio.Lock()
        self._checked: tuple[float, dict[str, str]] | None = None

    async def prepare(self) -> None:
        """Make the storage's client before the first probe (see prepare_storage)."""
        await prepare_storage(self._storage, self._log)

    async def checks(self) -> dict[str, str]:
        """Each backend's state: "ok" or "unreachable: <why>"; at most FRESH_S old."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            if self._checked is None or loop.time() - self._checked[0] >= FRESH_S:
                found = await checks(self._mongo, self._redis, self._storage)
                # fresh from its end: a probe that waited for this check takes its answer instead
                # of asking again, so no probe waits for two checks (the kubelet's timeout)
                self._checked = (loop.time(), found)
            return self._checked[1]

    async def answer(self) -> tuple[int, dict[str, object]]:
        """/readyz's status and body: 200 when every backend answers, else 503 and which does not."""
        found = await self.checks()
        ready = all(v == "ok" for v in found.values())
        return (200 if ready else 503), {"status": "ready" if ready else "not ready", "checks": found}

    async def aclose(self) -> None:
        await self._storage.aclose()
        await self._redis.aclose()
        await self._mongo.close()
