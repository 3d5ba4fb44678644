"""Per-tenant metrics with a bounded label set: the ``metrics_top_tenants`` tenants that brought
the most work (cost parked in their lanes, imgflow.core.schedule's ``work`` ranking) keep their
name as the ``tenant`` label, and every other tenant is reported as ``_other``, which no tenant can
be called (imgflow.core.keys.TENANT_PATTERN has no underscore): a tenant named ``other`` keeps its
own series. A service with
10,000 tenants still exports at most N + 1 series per metric.

A process reads the ranking at most every REFRESH_S. A counter's increment goes to the label its
tenant has at that moment, so no series ever goes down (a tenant entering the top N starts a series
of its own; ``_other`` grows more slowly from then on), and the series of a tenant that left the
top N are removed, which keeps the bound.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

from prometheus_client.metrics import MetricWrapperBase
from redis.asyncio import Redis

from imgflow.core import schedule
from imgflow.core.settings import Settings

OTHER = "_other"
REFRESH_S = 5.0


class TopTenants:
    """The tenants that have a label of their own, as this process last read them."""

    def __init__(self, settings: Settings, metrics: Sequence[MetricWrapperBase] = ()) -> None:
        self.settings = settings
        self.names: frozenset[str] = frozenset()
        self._metrics = metrics  # labelled by ``tenant`` alone: their series follow the ranking
        self._used: set[str] = set()
        self._read_at = float("-inf")

    async def refresh(self, redis: Redis) -> None:
        """Read the ranking again if the last reading is older than REFRESH_S."""
        if time.monotonic() - self._read_at < REFRESH_S:
            return
        self._read_at = time.monotonic()
        self.names = frozenset(
            await schedule.busiest(redis, self.settings, self.settings.metrics_top_tenants)
        )
        for gone in self._used - self.names - {OTHER}:
            for metric in self._metrics:
                with contextlib.suppress(KeyError):
                    metric.remove(gone)
        self._used &= self.names | {OTHER}

    def label(self, tenant: str) -> str:
        found = tenant if tenant in self.names else OTHER
        self._used.add(found)
        return found


@dataclass(frozen=True)
class Queued:
    """What waits under one label: a top tenant's lanes, or all the others' together."""

    jobs: int = 0
    cost: int = 0
    oldest_wait_s: float = 0.0


async def queued(redis: Redis, settings: Settings, top: TopTenants) -> dict[str, Queued]:
    """Jobs, cost and the oldest job's wait per label, ``_other`` always among them (zero when
    nothing else waits): from counts kept as jobs enter and leave the lanes, so a few reads per
    top tenant whatever the number of tenants or jobs waiting, and no write. Jobs not yet parked
    in a lane are not counted: workers park at every take, the API's reconciler every round."""
    await top.refresh(redis)
    named, others = await schedule.waiting(redis, settings, top.names)
    now_ms = time.time() * 1000

    def of(waiting: schedule.Waiting) -> Queued:
        since = now_ms if waiting.since_ms is None else waiting.since_ms
        return Queued(waiting.jobs, waiting.cost, max(0.0, now_ms - since) / 1000)

    return {OTHER: of(others)} | {top.label(tenant): of(each) for tenant, each in named.items()}
