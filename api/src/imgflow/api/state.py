"""What the API's routes share: the connections opened once at start-up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from faststream.redis import RedisBroker
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from imgflow.core.settings import Settings
from imgflow.core.storage import Storage
from imgflow.core.store import JobStore


@dataclass
class AppState:
    settings: Settings
    mongo: AsyncMongoClient[dict[str, Any]]
    store: JobStore
    storage: Storage
    broker: RedisBroker
    redis: Redis


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.imgflow
    return state
