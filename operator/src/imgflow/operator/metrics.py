"""The operator's Prometheus metrics (names fixed: the Grafana dashboard uses them)."""

from __future__ import annotations

import contextlib

from prometheus_client import Counter, Gauge

QUEUE_BACKLOG = Gauge(
    "imgflow_queue_backlog", "Jobs the workers have yet to finish: consumer-group lag plus pending entries"
)
DESIRED_REPLICAS = Gauge(
    "imgflow_autoscaler_desired_replicas",
    "Replicas the autoscaler wants for a worker Deployment",
    ["deployment"],
)
CURRENT_REPLICAS = Gauge(
    "imgflow_autoscaler_current_replicas", "A worker Deployment's spec.replicas as last seen", ["deployment"]
)
DECISIONS = Counter(
    "imgflow_autoscaler_decisions", "Replica changes made by the autoscaler", ["deployment", "direction"]
)
ERRORS = Counter("imgflow_operator_errors", "Failed calls to Redis or the Kubernetes API", ["target"])


def forget(deployment: str) -> None:
    """Drop the series of a Deployment that is no longer autoscaled."""
    for gauge in (DESIRED_REPLICAS, CURRENT_REPLICAS):
        with contextlib.suppress(KeyError):
            gauge.remove(deployment)
    for direction in ("up", "down"):
        with contextlib.suppress(KeyError):
            DECISIONS.remove(deployment, direction)
