"""What the API's routes share: the connections opened once at start-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, Request
from faststream.redis import RedisBroker
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from imgflow.api.slots import Slots
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
    readiness: Readiness
    keys: KeyStore
    endpoints: EndpointStore
    watermarks: WatermarkStore
    key_cache: Expiring[ApiKey | None]
    limiter: RateLimiter
    # Uploads being received: each holds a connection and up to max_upload_bytes of /tmp.
    uploads: Slots = field(init=False)
    # Live-progress streams: each holds a connection and a follower of the feed.
    streams: Slots = field(init=False)
    # Thumbnails being sent: each holds a connection and up to download_memory_bytes.
    downloads: Slots = field(init=False)
    auth_throttle: AuthThrottle = field(init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        self.uploads = Slots(
            "uploads",
            settings.max_concurrent_uploads,
            settings.max_uploads_per_key,
            full_status=503,
            advice="send the next when one has been answered.",
        )
        self.streams = Slots(
            "live-progress streams",
            settings.max_streams,
            settings.max_streams_per_key,
            full_status=429,
            advice="close one, or poll the job, and retry after Retry-After.",
        )
        self.downloads = Slots(
            "downloads",
            settings.max_concurrent_downloads,
            settings.max_downloads_per_key,
            full_status=503,
            advice="fetch the next when one has been received.",
        )
        self.auth_throttle = AuthThrottle(self.settings.auth_failures_per_s, self.settings.auth_failure_burst)


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.imgflow
    return state


# what a route declares to get the shared state
State = Annotated[AppState, Depends(get_state)]
