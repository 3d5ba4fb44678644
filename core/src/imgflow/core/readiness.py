"""Readiness: each backend a process needs for its work, asked now: "ok" or "unreachable: <why>".

The API's /readyz and the worker's ask the same three: MongoDB, Redis and the storage. Ready then
means serving (an upload can be recorded, stored and queued; a job can be read, processed and
written), so a rollout, ``helm --wait`` and ``make deploy`` wait for that, not only for the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from imgflow.core.storage import NotFound, Storage

CHECK_TIMEOUT_S = 3.0
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
