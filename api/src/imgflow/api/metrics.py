"""The API's Prometheus metrics: per request (recorded by imgflow.api.middleware), webhook
deliveries, and the tenants' waiting work."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from imgflow.core import tenant_metrics
from imgflow.core.settings import Settings
from imgflow.core.tenant_metrics import OTHER, Queued, TopTenants

REQUESTS = Counter("http_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SUBMITTED = Counter("imgflow_jobs_submitted_total", "Jobs accepted by the API")
REUSED = Counter(
    "imgflow_jobs_reused_total",
    "Jobs accepted by the API that completed at once from an identical job's outputs (of submitted)",
)
REJECTED = Counter("imgflow_jobs_rejected_total", "Uploads refused by the API", ["status"])
EXPIRED = Counter("imgflow_jobs_expired_total", "Finished jobs deleted after their retention")
DELETED_OBJECTS = Counter("imgflow_storage_deleted_objects_total", "Stored files deleted", ["why"])
DELETED_BYTES = Counter("imgflow_storage_deleted_bytes_total", "Bytes of stored files deleted", ["why"])
WEBHOOK_OUTCOMES = ("delivered", "failed", "given_up")
WEBHOOK_DELIVERIES = Counter(
    "imgflow_webhook_deliveries_total",
    "Webhook delivery attempts by outcome: delivered (2xx), failed (tried again later), given_up "
    "(failed with no more tries: the last one, a refused address, or its endpoint disabled)",
    ["outcome"],
)
for _outcome in WEBHOOK_OUTCOMES:  # every outcome's series from the start: a ratio has its terms
    WEBHOOK_DELIVERIES.labels(_outcome)


class QueuedByTenant(Collector):
    """What waits in the tenants' lanes (imgflow.core.tenant_metrics), read from Redis when
    /metrics is asked for: every API replica reports the same figures (take the max)."""

    def __init__(self) -> None:
        self.top: TopTenants | None = None
        self.found: dict[str, Queued] = {OTHER: Queued()}

    async def refresh(self, redis: Redis, settings: Settings) -> None:
        if self.top is None:
            self.top = TopTenants(settings)
        self.found = await tenant_metrics.queued(redis, settings, self.top)

    def collect(self) -> Iterator[Metric]:
        families = (
            (
                GaugeMetricFamily(
                    "imgflow_tenant_queued_jobs", "Jobs waiting in the tenant's lanes", labels=["tenant"]
                ),
                "jobs",
            ),
            (
                GaugeMetricFamily(
                    "imgflow_tenant_queued_cost",
                    "Estimated worker CPU (ms, imgflow.core.cost) of the tenant's waiting jobs",
                    labels=["tenant"],
                ),
                "cost",
            ),
            (
                GaugeMetricFamily(
                    "imgflow_tenant_oldest_wait_seconds",
                    "How long the tenant's oldest waiting job has waited (0: none waits)",
                    labels=["tenant"],
                ),
                "oldest_wait_s",
            ),
        )
        for family, field in families:
            for label, queued in self.found.items():
                family.add_metric([label], getattr(queued, field))
            yield family


QUEUED = QueuedByTenant()
REGISTRY.register(QUEUED)
