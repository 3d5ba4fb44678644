"""Which worker pods a scale-down should remove first: those whose removal throws away least work.
Pure functions, no I/O.

A ReplicaSet that shrinks deletes the pods with the lowest ``controller.kubernetes.io/pod-deletion-cost``
first. A removed pod finishes its jobs within its drain (``IMGFLOW_GRACEFUL_TIMEOUT_S``) and gives
back the rest, whose work so far is lost. Nobody knows how long a job has left, but a job that has
already run long is the one likely to outlast the drain, and the one whose work is lost if it does;
a pod of young short jobs finishes them while it drains. So a pod costs 1 + the whole seconds its
oldest job in flight has run, and 0 when idle: the pod holding a long job is kept over one finishing
short jobs, however many.

Each worker publishes in Redis (``{stream}:worker:{consumer}``, JSON ``{"pod": ..., "inflight":
..., "running_s": ...}``, 10 s expiry) its jobs in flight and how long the oldest has run; the
operator copies the cost into the annotation. A pod without a fresh record (starting, or stuck)
costs 0: losing it loses nothing, its messages are reclaimed by others.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class PodView:
    name: str
    labels: Mapping[str, str]
    cost: str | None  # the annotation's current value, if any


def heartbeat_pattern(stream: str) -> str:
    return f"{stream}:worker:*"


def parse_heartbeats(values: Iterable[bytes | str | None]) -> dict[str, int]:
    """Pod name -> its deletion cost, the highest of its consumers' (a container restarted in the
    pod leaves a second record for a few seconds); unreadable records are skipped. A record without
    ``running_s`` (a worker from before it was published) counts its jobs as just started."""
    costs: dict[str, int] = {}
    for raw in values:
        if raw is None:  # expired between SCAN and MGET
            continue
        try:
            record = json.loads(raw)
            pod, count = str(record["pod"]), int(record["inflight"])
            running_s = int(record.get("running_s", 0))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
        cost = 1 + max(running_s, 0) if count > 0 else 0
        costs[pod] = max(costs.get(pod, 0), cost)
    return costs


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """A Deployment's ``matchLabels`` selects the pod (an empty selector selects nothing here)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def deletion_costs(
    costs: Mapping[str, int], pods: Iterable[PodView], selectors: Iterable[Mapping[str, str]]
) -> dict[str, int]:
    """The pods of autoscaled Deployments whose annotation should change, and to what."""
    selectors = list(selectors)
    changes: dict[str, int] = {}
    for pod in pods:
        if not any(selects(selector, pod.labels) for selector in selectors):
            continue
        want = costs.get(pod.name, 0)
        if pod.cost is None and want == 0:
            continue  # no annotation already means cost 0
        if pod.cost != str(want):
            changes[pod.name] = want
    return changes
