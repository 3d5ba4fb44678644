"""A per-process cache whose entries are trusted for a fixed time: key records (auth) and tenants'
webhook endpoints (the sender) are read from MongoDB at most once per key per ``ttl``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

V = TypeVar("V")
MAX_ENTRIES = 10_000  # beyond this, lapsed entries go, then the oldest: made-up keys cannot grow it


class Expiring(Generic[V]):
    def __init__(self, load: Callable[[str], Awaitable[V]], ttl: float) -> None:
        self._load = load
        self._ttl = ttl
        self._entries: dict[str, tuple[V, float]] = {}

    async def get(self, key: str) -> V:
        now = asyncio.get_running_loop().time()
        cached = self._entries.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        value = await self._load(key)
        self._entries.pop(key, None)  # re-inserted last: the dict's order is the entries' age
        if len(self._entries) >= MAX_ENTRIES:
            self._entries = {k: v for k, v in self._entries.items() if v[1] > now}
            while len(self._entries) >= MAX_ENTRIES:
                del self._entries[next(iter(self._entries))]
        self._entries[key] = (value, now + self._ttl)
        return value

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)
