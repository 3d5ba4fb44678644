"""The API process's Redis connections: every pool sized on purpose, every wait bounded.

- requests: ``redis_pool_size`` connections; a request finding none free within ``redis_pool_wait_s``
  fails with PoolExhausted, which answers 503 + Retry-After (imgflow.api.problems) for that request
  alone. MongoDB's pool is sized too (imgflow.core.store.connect); its wait is part of each
  operation's time limit (mongodb_timeout_s).
- live progress: one connection for all of the process's followers (imgflow.core.events.ChangeFeed).
- the webhook sender: a few of its own, so its blocking read never holds a request's connection.
- /readyz: one of its own (imgflow.core.readiness), so clients exhausting the request pool cannot
  make the replica look unready and take it out of its Service.

Each connection names itself (CLIENT SETNAME), so CLIENT LIST shows which pool holds what.
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from imgflow.core.backends import reconnect_once
from imgflow.core.settings import Settings

WEBHOOK_SENDER_CONNECTIONS = 4  # its round: one blocking read, then a batch's deliveries side by side
# Above the longest blocking read (the webhook sender's 2 s, the feed's 2 s), so none trips it;
# long enough that a busy Redis is not taken for a dead one.
SOCKET_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 3.0


class PoolExhausted(RedisConnectionError):
    """No connection of the pool became free within the pool's wait."""


class BoundedPool(BlockingConnectionPool):
    """A BlockingConnectionPool whose wait running out is an exception of its own."""

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        try:
            connection: AbstractConnection = await super().get_connection()  # type: ignore[no-untyped-call]
        except RedisConnectionError as exc:
            # the pool raises ConnectionError from its wait's TimeoutError; a refused connect is
            # a ConnectionError too, from an OSError
            if isinstance(exc.__cause__, asyncio.TimeoutError):
                raise PoolExhausted(f"no free Redis connection within {self.timeout} s") from exc
            raise
        return connection


def redis_client(settings: Settings, name: str, size: int, wait_s: float | None) -> Redis:
    """A client of its own pool of ``size`` connections named ``imgflow-api-<name>``; ``wait_s``:
    how long a command waits for a free one (None: as long as it takes, for a pool only one task
    uses)."""
    pool = BoundedPool.from_url(
        settings.redis_url,
        max_connections=size,
        timeout=wait_s,
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        client_name=f"imgflow-api-{name}",
        retry=reconnect_once(),
    )
    return Redis.from_pool(pool)


def request_redis(settings: Settings) -> Redis:
    return redis_client(settings, "requests", settings.redis_pool_size, settings.redis_pool_wait_s)


def feed_redis(settings: Settings) -> Redis:
    # the change feed's blocking read, and the wake a newcomer sends while it blocks
    return redis_client(settings, "feed", 2, None)


def webhook_redis(settings: Settings) -> Redis:
    return redis_client(settings, "webhooks", WEBHOOK_SENDER_CONNECTIONS, None)
