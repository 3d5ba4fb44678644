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

The ReplicaSet controller reads the annotations from its own watch, which lags behind the
workers: a pod that has just taken a job may still show 0, one that has just gone idle its old
cost. A worker writes its record at once (at most twice a second) when it goes from idle to busy
or back, and before a scale-down the operator brings the costs up to date and, if that changed the
pods' order, waits a moment (``hold_scale_down``) so that the ReplicaSet chooses by the new one.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# How long a scale-down waits after a cost that changed the pods' order was written, for the
# ReplicaSet controller's watch to see it (a loaded node's lags by hundreds of milliseconds).
COSTS_SEEN_S = 1.0
# The longest a scale-down waits for the costs to settle: pods that keep taking and finishing jobs
# change the order all the time, and must not hold the scale-down back for good.
COSTS_HOLD_MAX_S = 5.0


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


def reorders(pods: Iterable[PodView], changes: Mapping[str, int]) -> bool:
    """Some of the changes may change which pod a ReplicaSet removes first: a pod took a job (its
    cost leaves 0) or its oldest job ended (its cost falls). A busy pod's cost that grows as its
    job runs keeps the order (the pods' oldest jobs age alike), and waiting for it would hold a
    scale-down back as long as any pod is busy."""
    before = {pod.name: _cost(pod.cost) for pod in pods}
    for name, cost in changes.items():
        was = before.get(name, 0)
        if was == 0 or cost < was:
            return True
    return False


def hold_scale_down(reordered_at: float | None, held_since: float | None, now: float) -> bool:
    """A scale-down due at ``now`` waits: the pods' order changed (``reordered_at``) less than
    ``COSTS_SEEN_S`` ago, and it has not waited (since ``held_since``) ``COSTS_HOLD_MAX_S`` yet.
    Times on one monotonic clock."""
    if reordered_at is None or now - reordered_at >= COSTS_SEEN_S:
        return False
    return held_since is None or now - held_since < COSTS_HOLD_MAX_S


def _cost(annotation: str | None) -> int:
    """An annotation's cost; one that is not a whole number counts as 0, as the ReplicaSet
    controller reads it."""
    try:
        return int(annotation) if annotation is not None else 0
    except ValueError:
        return 0
