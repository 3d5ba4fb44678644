"""Which worker pods a scale-down should remove first: the idle ones. Pure functions, no I/O.

A ReplicaSet that shrinks deletes the pods with the lowest ``controller.kubernetes.io/pod-deletion-cost``
first. Each worker publishes its in-flight job count in Redis (``{stream}:worker:{consumer}``, JSON
``{"pod": ..., "inflight": ...}``, 10 s expiry); the operator copies it into that annotation, so
an idle worker costs 0 and one holding three jobs costs 3. A pod without a fresh record (starting,
or stuck) costs 0 too: losing it loses nothing, its messages are reclaimed by others.
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
    """Pod name -> jobs in flight, summed over the pod's consumers; unreadable records are skipped."""
    inflight: dict[str, int] = {}
    for raw in values:
        if raw is None:  # expired between SCAN and MGET
            continue
        try:
            record = json.loads(raw)
            pod, count = str(record["pod"]), int(record["inflight"])
        except (ValueError, KeyError, TypeError):
            continue
        inflight[pod] = inflight.get(pod, 0) + max(count, 0)
    return inflight


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """A Deployment's ``matchLabels`` selects the pod (an empty selector selects nothing here)."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def deletion_costs(
    inflight: Mapping[str, int], pods: Iterable[PodView], selectors: Iterable[Mapping[str, str]]
) -> dict[str, int]:
    """The pods of autoscaled Deployments whose annotation should change, and to what."""
    selectors = list(selectors)
    changes: dict[str, int] = {}
    for pod in pods:
        if not any(selects(selector, pod.labels) for selector in selectors):
            continue
        want = inflight.get(pod.name, 0)
        if pod.cost is None and want == 0:
            continue  # no annotation already means cost 0
        if pod.cost != str(want):
            changes[pod.name] = want
    return changes
