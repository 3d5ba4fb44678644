"""The autoscaler's loop: read the backlog, decide per Deployment, patch ``scale``; and the pods' cost.

One loop for all autoscaled Deployments, every ``autoscale_interval_s`` (0.5 s): one XINFO GROUPS
per tick, whatever the number of Deployments, and a scale patch only when a decision changes
something. The Deployments themselves come from a kopf index (a watch), so reading them costs
nothing per tick. It is a plain task rather than a kopf daemon or timer per Deployment because
those make kopf put a finalizer on the Deployment, which needs ``patch`` on Deployments (rights to
change their pod template) and would block deleting them whenever the operator is down; the
operator may only touch ``deployments/scale``.

Before it patches a scale-down, the loop brings the pods' deletion costs up to date
(``DeletionCosts.tick``) and, if that changed their order, waits (``podcost.hold_scale_down``):
the ReplicaSet picks the pods to remove from its own watch, which must see the new costs first.
Scale-ups never wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from imgflow.core.queue import Backlog, read_backlog
from imgflow.operator import metrics
from imgflow.operator.autoscale import History, Policy, decide, parse_policy
from imgflow.operator.kube import Kube, KubeError, ObjectRef
from imgflow.operator.podcost import (
    PodView,
    deletion_costs,
    heartbeat_pattern,
    hold_scale_down,
    parse_heartbeats,
    reorders,
)
from imgflow.operator.settings import OperatorSettings

log = logging.getLogger(__name__)

# How long a replica count we patched is believed over what the watch still shows.
PATCH_SETTLE_S = 5.0


@dataclass(frozen=True)
class Target:
    """An autoscaled Deployment, as the kopf index last saw it."""

    namespace: str
    name: str
    uid: str
    replicas: int
    annotations: Mapping[str, str]
    selector: Mapping[str, str]

    @property
    def ref(self) -> ObjectRef:
        return ObjectRef("apps/v1", "Deployment", self.namespace, self.name, self.uid)


@dataclass
class _State:
    history: History | None = None
    problems: tuple[str, ...] = ()
    patched: tuple[int, float] | None = None  # (replicas, when) until the watch shows them
    failing: str | None = None  # the last scale error, reported once
    held_since: float | None = None  # a scale-down has waited for the pods' costs since then

    def current(self, observed: int, now: float) -> int:
        # Our own patch may not have come back through the watch yet; deciding from the stale
        # count would patch (and count, and announce) the same change twice.
        if self.patched is not None:
            replicas, when = self.patched
            if observed != replicas and now - when < PATCH_SETTLE_S:
                return replicas
            self.patched = None
        return observed


class _Quiet:
    """Logs a recurring failure once, and again only when it changes or clears."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._last: str | None = None

    def failed(self, exc: BaseException) -> None:
        metrics.ERRORS.labels(self._what).inc()
        text = f"{type(exc).__name__}: {exc}"
        if text != self._last:
            log.warning("%s unavailable: %s (retrying)", self._what, text)
            self._last = text

    def ok(self) -> None:
        if self._last is not None:
            log.info("%s available again", self._what)
            self._last = None


class Autoscaler:
    def __init__(
        self,
        settings: OperatorSettings,
        redis: Redis,
        kube: Kube,
        targets: Callable[[], Iterable[Target]],
        costs: DeletionCosts | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._kube = kube
        self._targets = targets
        self._costs = costs
        self._clock = clock
        self._states: dict[str, _State] = {}
        self._redis_health = _Quiet("redis")
        self.last_tick: float | None = None  # when a tick last completed (the clock's time)

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except (RedisError, OSError) as exc:
                self._redis_health.failed(exc)
            except Exception:
                # A bug must not stop autoscaling for good; the probe reports the stale tick.
                log.exception("autoscaler tick failed")
            else:
                self._redis_health.ok()
                self.last_tick = self._clock()
            await asyncio.sleep(self._settings.autoscale_interval_s)

    async def tick(self) -> None:
        backlog = await read_backlog(self._redis, self._settings)
        metrics.QUEUE_BACKLOG.set(backlog.total)
        now = self._clock()
        seen = set()
        for target in self._targets():
            seen.add(target.name)
            await self._scale(target, backlog, now)
        for gone in set(self._states) - seen:
            del self._states[gone]
            metrics.forget(gone)

    async def _scale(self, target: Target, backlog: Backlog, now: float) -> None:
        state = self._states.setdefault(target.name, _State())
        parsed = parse_policy(target.annotations)
        if parsed.problems != state.problems:
            state.problems = parsed.problems
            if parsed.problems:
                message = "Ignored: " + "; ".join(parsed.problems)
                log.warning("deployment %s: %s", target.name, message)
                await self._kube.post_event(target.ref, "Warning", "InvalidAutoscaling", message)

        current = state.current(target.replicas, now)
        decision = decide(parsed.policy, current, backlog.total, now, state.history)
        state.history = decision.history
        metrics.CURRENT_REPLICAS.labels(target.name).set(current)
        metrics.DESIRED_REPLICAS.labels(target.name).set(decision.desired)
        direction = decision.direction(current)
        if direction == "down" and await self._hold(target, state):
            return
        state.held_since = None
        if direction is None:
            return

        try:
            await self._kube.scale(target.namespace, target.name, decision.desired)
        except KubeError as exc:
            metrics.ERRORS.labels("kubernetes").inc()
            text = f"scaling to {decision.desired} failed: {getattr(exc, 'reason', None) or exc}"
            if text != state.failing:
                state.failing = text
                log.warning("deployment %s: %s", target.name, text)
                await self._kube.post_event(target.ref, "Warning", "ScaleFailed", text)
            return
        state.failing = None
        state.patched = (decision.desired, now)
        metrics.DECISIONS.labels(target.name, direction).inc()
        message = _explain(parsed.policy, current, decision.desired, backlog)
        log.info("deployment %s: %s", target.name, message)
        reason = "ScaledUp" if direction == "up" else "ScaledDown"
        await self._kube.post_event(target.ref, "Normal", reason, message)

    async def _hold(self, target: Target, state: _State) -> bool:
        """Whether a scale-down due now waits. The ReplicaSet removes the pods of lowest deletion
        cost as its own watch shows them, which lags behind the workers (a job just taken may not
        be costed yet, a pod just gone idle still show its old cost): the costs are brought up to
        date first, and when that changed the pods' order, the scale-down waits for a later tick
        so that the ReplicaSet's watch sees the new order before it chooses."""
        if self._costs is None:
            return False
        await self._costs.tick()
        now = self._clock()
        if not hold_scale_down(self._costs.reordered_at, state.held_since, now):
            return False
        if state.held_since is None:
            state.held_since = now
            log.info("deployment %s: scale-down waits for the pods' new deletion costs", target.name)
        return True


def _explain(policy: Policy, current: int, desired: int, backlog: Backlog) -> str:
    why = (
        f"backlog {backlog.total} (lag {backlog.lag}, pending {backlog.pending}), "
        f"{policy.backlog_per_replica} per replica"
    )
    if desired < current:
        why += f", none higher in the last {policy.scale_down_window_s:g} s"
    return f"Scaled from {current} to {desired} replicas: {why}."


class DeletionCosts:
    """Keeps ``pod-deletion-cost`` of autoscaled workers' pods at what their removal would throw
    away: how long their oldest job in flight has run (``imgflow.operator.podcost``)."""

    def __init__(
        self,
        settings: OperatorSettings,
        redis: Redis,
        kube: Kube,
        namespace: str,
        targets: Callable[[], Iterable[Target]],
        pods: Callable[[], Iterable[PodView]],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._redis = redis
        self._kube = kube
        self._namespace = namespace
        self._targets = targets
        self._pods = pods
        self._clock = clock
        self._health = _Quiet("redis (worker records)")
        self.reordered_at: float | None = None  # when a change last altered the pods' order

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except (RedisError, OSError) as exc:
                self._health.failed(exc)
            except Exception:
                log.exception("deletion cost update failed")
            else:
                self._health.ok()
            await asyncio.sleep(self._settings.pod_cost_interval_s)

    async def tick(self) -> dict[str, int]:
        """Patch what changed; returns the changes made. Run by its own loop and by the autoscaler
        right before a scale-down."""
        selectors = [t.selector for t in self._targets()]
        if not selectors:
            return {}
        keys = [key async for key in self._redis.scan_iter(match=heartbeat_pattern(self._settings.stream))]
        values = await self._redis.mget(keys) if keys else []
        pods = list(self._pods())
        changes = deletion_costs(parse_heartbeats(values), pods, selectors)
        made: dict[str, int] = {}
        for pod, cost in changes.items():
            try:
                await self._kube.set_deletion_cost(self._namespace, pod, cost)
            except KubeError as exc:  # tried again next tick
                metrics.ERRORS.labels("kubernetes").inc()
                log.warning("pod %s: setting its deletion cost failed: %s", pod, exc)
            else:
                made[pod] = cost
        if reorders(pods, made):
            self.reordered_at = self._clock()
        return made
