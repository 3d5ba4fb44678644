"""The worker's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600)

FINISHED = Counter("imgflow_jobs_completed_total", "Jobs a worker finished", ["status"])
DURATION = Histogram(
    "imgflow_job_duration_seconds",
    "Time from submit to finished, per job",
    buckets=LATENCY_BUCKETS,
)
PROCESSING = Histogram(
    "imgflow_job_processing_seconds",
    "Time a worker spent making one thumbnail (fetch, decode, encode, store)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
INFLIGHT = Gauge("imgflow_worker_inflight_jobs", "Jobs this worker is processing now")
# labelled by imgflow.core.tenant_metrics: the top tenants by name, the others as "_other"
COST_SERVED = Counter(
    "imgflow_job_cost_served_total",
    "Estimated worker CPU (ms, imgflow.core.cost) of the jobs a worker finished, per tenant: each "
    "tenant's share of the workers",
    ["tenant"],
)
WAITED = Histogram(
    "imgflow_job_wait_seconds",
    "Time a job waited for a worker, per tenant: from its queueing (its stream entry) to a worker taking it",
    ["tenant"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600),
)
RECLAIMED = Counter("imgflow_jobs_reclaimed_total", "Messages taken over from a worker that went silent")
RETRIES = Counter(
    "imgflow_job_retries_total", "Jobs scheduled again after failing for a passing reason", ["reason"]
)
DEAD_LETTERS = Counter("imgflow_dead_letters_total", "Jobs failed after their last retry (dead letters)")
RESTORED = Counter(
    "imgflow_jobs_restored_total",
    "Messages whose job had no record: restored from the message, recorded failed (original gone "
    "too), or dropped (no copy in the message, or older than retention)",
    ["outcome"],
)
