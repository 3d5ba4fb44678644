"""/readyz: MongoDB and Redis answer, asked on connections no client request can take.

A ping through the request pools would wait behind the clients' requests, and a replica whose
pools a client exhausted would leave its Service. So Redis is asked on one connection of its own,
and MongoDB through a client of its own with a pool of one (a real round trip: the main client's
server state only says what its monitor saw at its last heartbeat, up to 10 s ago). Checks are
shared: however many probes arrive at once, one check runs per FRESH_S, so flooding the
unauthenticated /readyz costs MongoDB and Redis nothing more.
"""

from __future__ import annotations

import asyncio
from typing import Any

from pymongo import AsyncMongoClient

from imgflow.api.pools import redis_client
from imgflow.core.settings import Settings

FRESH_S = 1.0
CHECK_TIMEOUT_S = 3.0


class Readiness:
    def __init__(self, settings: Settings) -> None:
        self._redis = redis_client(settings, "ready", 1, CHECK_TIMEOUT_S)
        self._mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            settings.mongodb_url,
            maxPoolSize=1,
            serverSelectionTimeoutMS=int(CHECK_TIMEOUT_S * 1000),
            waitQueueTimeoutMS=int(CHECK_TIMEOUT_S * 1000),
        )
        self._lock = asyncio.Lock()
        self._checked: tuple[float, dict[str, str]] | None = None

    async def checks(self) -> dict[str, str]:
        """Each backend's state: "ok" or "unreachable: <why>"."""
        async with self._lock:
            now = asyncio.get_running_loop().time()
            if self._checked is None or now - self._checked[0] >= FRESH_S:
                self._checked = (now, {"mongodb": await self._mongodb(), "redis": await self._redis_ping()})
            return self._checked[1]

    async def _mongodb(self) -> str:
        try:
            await asyncio.wait_for(self._mongo.admin.command("ping"), timeout=CHECK_TIMEOUT_S)
        except Exception as exc:
            return f"unreachable: {type(exc).__name__}"
        return "ok"

    async def _redis_ping(self) -> str:
        try:
            await asyncio.wait_for(self._redis.ping(), timeout=CHECK_TIMEOUT_S)
        except Exception as exc:
            return f"unreachable: {type(exc).__name__}"
        return "ok"

    async def aclose(self) -> None:
        await self._redis.aclose()
        await self._mongo.close()
