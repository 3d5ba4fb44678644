"""The connections every imgflow process holds: MongoDB (and the job store on it), Redis, the
storage backend and the queue's broker; opened and closed here for the API, the worker and the
operator alike.

What differs between processes is passed in explicitly: the API's Redis client with its bounded
pool (imgflow.api.pools), the worker's broker options (its graceful timeout). Opening makes
clients only; each connects on first use, so a process started while a backend is down comes up
and says so (/readyz, a warning) instead of exiting. The broker is connected by whoever uses it:
the API and operator publish (``await broker.connect()``), the worker's FastStream app starts it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from faststream.redis import RedisBroker
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from imgflow.core.queue import make_broker
from imgflow.core.settings import Settings
from imgflow.core.snapshots import Snapshots
from imgflow.core.storage import Storage, make_storage
from imgflow.core.store import Document, JobStore, connect

# Short enough that a call fails fast (503, a retried loop) when Redis is gone, longer than any
# blocking read the processes make on this client.
REDIS_SOCKET_TIMEOUT_S = 5.0
REDIS_CONNECT_TIMEOUT_S = 3.0


def reconnect_once() -> Retry:
    """A pooled connection Redis closed (a restart, an idle timeout) is found dead only when used:
    reconnect and send again, once. redis-py's clients do so for a single command, but a pipeline
    uses the connection's own policy, which is no retry: without this the first pipeline on each
    pooled connection after a Redis restart failed. A timeout is not retried (the commands may have
    run)."""
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,))


# The broker's two lines per message handled ("Received", "Processed") go to DEBUG: they would bury
# the lines that say something, and the worker logs each job's outcome in one line of its own.
BROKER_LOG = {"logger": logging.getLogger("imgflow.broker"), "log_level": logging.DEBUG}


@dataclass(frozen=True)
class Backends:
    mongo: AsyncMongoClient[Document]
    db: AsyncDatabase[Document]
    store: JobStore
    redis: Redis
    storage: Storage
    broker: RedisBroker

    @classmethod
    def open(cls, settings: Settings, *, redis: Redis | None = None, **broker_options: Any) -> Backends:
        """The clients for ``settings``. ``redis``: a client of the process's own (default: one
        plain client with short timeouts); ``broker_options``: the process's own broker options."""
        mongo = connect(settings)
        db = mongo[settings.mongodb_database]
        if redis is None:
            redis = Redis.from_url(
                settings.redis_url,
                socket_timeout=REDIS_SOCKET_TIMEOUT_S,
                socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
                retry=reconnect_once(),
            )
        return cls(
            mongo=mongo,
            db=db,
            store=JobStore(db, Snapshots(redis, settings)),
            redis=redis,
            storage=make_storage(settings, db),
            broker=make_broker(settings, **BROKER_LOG, **broker_options),
        )

    async def aclose(self) -> None:
        """Close every connection; stopping a broker already stopped (the worker's, by FastStream)
        is harmless."""
        await self.broker.stop()
        await self.storage.aclose()
        await self.redis.aclose()
        await self.mongo.close()
