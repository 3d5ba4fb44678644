"""How many workers a Deployment should run for a given backlog: pure decisions, no I/O.

A worker Deployment opts in with the label ``imgflow.io/autoscale: "true"`` and is configured by
annotations on the Deployment itself (``ANNOTATIONS``). Annotations rather than a CRD or a config
file because the configuration then travels with the Deployment it configures (Helm renders both
together), shows in ``kubectl describe deployment``, and needs no extra CRD and no extra RBAC: the
operator already watches Deployments to know their replicas.

The rules, after Kubernetes' HPA:

* the recommendation is ``ceil(backlog / backlog-per-replica)`` within [min, max], where the
  backlog is the consumer group's lag plus its pending (delivered, unacknowledged) entries;
* scale up at once: a recommendation above the current count is acted on in the same tick, by at
  most ``max(4, current)`` replicas per decision (double, or +4 from small counts);
* scale down only to the *highest* recommendation of the last ``scale-down-window-seconds``, so a
  backlog that comes and goes does not make replicas flap; at most half the replicas per decision;
* with ``scale-to-zero``, an empty backlog recommends 0, and the first message wakes it up again:
  a backlog above zero always recommends at least one replica.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

AUTOSCALE_LABEL = "imgflow.io/autoscale"
MIN_REPLICAS = "imgflow.io/min-replicas"
MAX_REPLICAS = "imgflow.io/max-replicas"
BACKLOG_PER_REPLICA = "imgflow.io/backlog-per-replica"
SCALE_TO_ZERO = "imgflow.io/scale-to-zero"
SCALE_DOWN_WINDOW = "imgflow.io/scale-down-window-seconds"
ANNOTATIONS = (MIN_REPLICAS, MAX_REPLICAS, BACKLOG_PER_REPLICA, SCALE_TO_ZERO, SCALE_DOWN_WINDOW)

SCALE_UP_MIN_STEP = 4  # a decision may add max(SCALE_UP_MIN_STEP, current) replicas

Direction = Literal["up", "down"]
History = tuple[tuple[float, int], ...]  # (time, recommendation), oldest first


@dataclass(frozen=True)
class Policy:
    """One Deployment's scaling configuration, as read from its annotations."""

    min_replicas: int = 1
    max_replicas: int = 10
    backlog_per_replica: int = 10
    scale_to_zero: bool = False
    scale_down_window_s: float = 60.0


@dataclass(frozen=True)
class ParsedPolicy:
    policy: Policy
    problems: tuple[str, ...] = ()  # annotations that were ignored, and why, for a Warning event


def parse_policy(annotations: Mapping[str, str]) -> ParsedPolicy:
    """The policy the annotations describe; a bad value is reported and its default used."""
    problems: list[str] = []

    def integer(key: str, default: int, least: int) -> int:
        raw = annotations.get(key)
        if raw is None:
            return default
        try:
            value = int(raw.strip())
        except ValueError:
            problems.append(f"{key}={raw!r} is not a whole number; using {default}")
            return default
        if value < least:
            problems.append(f"{key}={raw!r} is below {least}; using {default}")
            return default
        return value

    raw_zero = annotations.get(SCALE_TO_ZERO)
    scale_to_zero = False
    if raw_zero is not None:
        if raw_zero.strip().lower() in ("true", "false"):
            scale_to_zero = raw_zero.strip().lower() == "true"
        else:
            problems.append(f'{SCALE_TO_ZERO}={raw_zero!r} is not "true" or "false"; using "false"')

    min_replicas = integer(MIN_REPLICAS, 0 if scale_to_zero else 1, 0)
    if min_replicas == 0 and not scale_to_zero:
        problems.append(f'{MIN_REPLICAS}=0 needs {SCALE_TO_ZERO}: "true"; using 1')
        min_replicas = 1
    max_replicas = integer(MAX_REPLICAS, max(Policy.max_replicas, min_replicas), 1)
    if max_replicas < min_replicas:
        problems.append(
            f"{MAX_REPLICAS}={max_replicas} is below {MIN_REPLICAS}={min_replicas}; using {min_replicas}"
        )
        max_replicas = min_replicas
    per_replica = integer(BACKLOG_PER_REPLICA, Policy.backlog_per_replica, 1)

    window: float = Policy.scale_down_window_s
    raw_window = annotations.get(SCALE_DOWN_WINDOW)
    if raw_window is not None:
        try:
            window = float(raw_window.strip())
            if not math.isfinite(window) or window < 0:
                raise ValueError
        except ValueError:
            problems.append(
                f"{SCALE_DOWN_WINDOW}={raw_window!r} is not a number of seconds >= 0; using {window:g}"
            )
            window = Policy.scale_down_window_s

    policy = Policy(min_replicas, max_replicas, per_replica, scale_to_zero, window)
    return ParsedPolicy(policy, tuple(problems))


def recommend(policy: Policy, backlog: int) -> int:
    """Replicas the backlog calls for right now, within the policy's bounds."""
    if backlog <= 0:
        return 0 if policy.scale_to_zero else policy.min_replicas
    wanted = math.ceil(backlog / policy.backlog_per_replica)
    return min(max(wanted, policy.min_replicas, 1), policy.max_replicas)


@dataclass(frozen=True)
class Decision:
    desired: int  # replicas to set; equal to current when nothing is to be done
    recommendation: int  # what the backlog alone calls for now
    stabilized: int  # the highest recommendation within the scale-down window
    history: History = field(repr=False)  # to pass to the next decide() for this Deployment

    def direction(self, current: int) -> Direction | None:
        if self.desired > current:
            return "up"
        if self.desired < current:
            return "down"
        return None


def decide(policy: Policy, current: int, backlog: int, now: float, history: History | None) -> Decision:
    """What to do about one Deployment at time ``now`` (seconds, any monotonic clock).

    ``history`` is the previous decision's, or None for a Deployment seen for the first time: its
    current count then counts as a recommendation, so nothing is scaled down before a full window
    has been observed (after an operator restart, too).
    """
    recommendation = recommend(policy, backlog)
    horizon = now - policy.scale_down_window_s
    past = history if history is not None else ((now, current),)
    # An entry no higher than a later one can never be the window's maximum again (the later one
    # outlives it), so the history stays short: strictly decreasing recommendations.
    kept = tuple((t, r) for t, r in past if horizon <= t <= now and r > recommendation)
    new_history = (*kept, (now, recommendation))
    stabilized = max(r for _, r in new_history)

    if current > policy.max_replicas:  # bounds are not subject to the window
        desired = policy.max_replicas
    elif recommendation > current:
        desired = min(recommendation, current + max(SCALE_UP_MIN_STEP, current))
    elif stabilized < current:
        desired = max(stabilized, current - max(1, current // 2))
    else:
        desired = current
    return Decision(desired, recommendation, stabilized, new_history)
