"""/readyz: MongoDB, Redis and the storage answer, asked on connections no client request can take.

A ping through the request pools would wait behind the clients' requests, and a replica whose
pools a client exhausted would leave its Service. So Redis is asked on one connection of its own,
MongoDB through a client of its own with a pool of one (a real round trip: the main client's
server state only says what its monitor saw at its last heartbeat, up to 10 s ago), and the storage
through a client of its own too. Checks are shared: however many probes arrive at once, one check
runs per FRESH_S, so flooding the unauthenticated /readyz costs the backends nothing more.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from pymongo import AsyncMongoClient

from imgflow.api.pools import redis_client
from imgflow.core import readiness
from imgflow.core.settings import Settings
from imgflow.core.storage import make_storage

FRESH_S = 1.0

log = logging.getLogger("imgflow.api")


class Readiness:
    def __init__(self, settings: Settings) -> None:
        timeout = readiness.CHECK_TIMEOUT_S
        self._redis = redis_client(settings, "ready", 1, timeout)
        self._mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongodb_url,
            maxPoolSize=1,
            serverSelectionTimeoutMS=int(timeout * 1000),
            waitQueueTimeoutMS=int(timeout * 1000),
        )
        self._storage = make_storage(settings, self._mongo[settings.mongodb_database])
        self._lock = asyncio.Lock()
        self._checked: tuple[float, dict[str, str]] | None = None

    async def prepare(self) -> None:
        """Make the storage's client before the first probe (see readiness.prepare_storage)."""
        await readiness.prepare_storage(self._storage, log)

    async def checks(self) -> dict[str, str]:
        """Each backend's state: "ok" or "unreachable: <why>"."""
        async with self._lock:
            now = asyncio.get_running_loop().time()
            if self._checked is None or now - self._checked[0] >= FRESH_S:
                self._checked = (now, await readiness.checks(self._mongo, self._redis, self._storage))
            return self._checked[1]

    async def aclose(self) -> None:
        await self._storage.aclose()
        await self._redis.aclose()
        await self._mongo.close()
