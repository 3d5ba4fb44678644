"""The API's Prometheus metrics (recorded per request by imgflow.api.middleware)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

REQUESTS = Counter("http_requests_total", "HTTP requests answered", ["method", "route", "status"])
LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SUBMITTED = Counter("imgflow_jobs_submitted_total", "Jobs accepted by the API")
REJECTED = Counter("imgflow_jobs_rejected_total", "Uploads refused by the API", ["status"])
EXPIRED = Counter("imgflow_jobs_expired_total", "Finished jobs deleted after their retention")
DELETED_OBJECTS = Counter("imgflow_storage_deleted_objects_total", "Stored files deleted", ["why"])
DELETED_BYTES = Counter("imgflow_storage_deleted_bytes_total", "Bytes of stored files deleted", ["why"])
