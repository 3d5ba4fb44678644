"""What the API's routes share: the connections opened once at start-up."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from faststream.redis import RedisBroker
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from imgflow.api.throttle import AuthThrottle
from imgflow.core.endpoints import EndpointStore
from imgflow.core.events import ChangeFeed
from imgflow.core.keys import ApiKey, KeyStore
from imgflow.core.settings import Settings
from imgflow.core.storage import Storage
from imgflow.core.store import JobStore
from imgflow.core.watermarks import WatermarkStore

if TYPE_CHECKING:
    from imgflow.api.expiring import Expiring
    from imgflow.api.progress import StreamSlots
    from imgflow.api.ratelimit import RateLimiter
    from imgflow.api.readiness import Readiness


@dataclass
class AppState:
    settings: Settings
    mongo: AsyncMongoClient[dict[str, Any]]
    store: JobStore
    storage: Storage
    broker: RedisBroker
    # requests' pool (imgflow.api.pools); the feed, the webhook sender and readiness have their own
    redis: Redis
    webhook_redis: Redis
    feed: ChangeFeed
    streams: StreamSlots
    readiness: Readiness
    keys: KeyStore
    endpoints: EndpointStore
    watermarks: WatermarkStore
    key_cache: Expiring[ApiKey | None]
    limiter: RateLimiter
    # Uploads being received now: each holds a connection and up to max_upload_bytes of /tmp.
    uploads: asyncio.Semaphore = field(init=False)
    # ... and of them, how many each API key sends (imgflow.api.slots)
    uploads_by_key: Counter[str] = field(default_factory=Counter)
    auth_throttle: AuthThrottle = field(init=False)

    def __post_init__(self) -> None:
        self.uploads = asyncio.Semaphore(self.settings.max_concurrent_uploads)
        self.auth_throttle = AuthThrottle(self.settings.auth_failures_per_s, self.settings.auth_failure_burst)


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.imgflow
    return state


# what a route declares to get the shared state
State = Annotated[AppState, Depends(get_state)]
