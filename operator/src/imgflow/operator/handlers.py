"""The kopf handlers: ImageJobs in, status and Events out; worker Deployments scaled by backlog.

Importing this module registers the handlers with kopf's default registry.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import kopf
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from imgflow.core import lifecycle
from imgflow.core.errors import BackendUnavailable
from imgflow.core.jobs import JobStatus
from imgflow.core.retention import delete_job
from imgflow.operator.autoscale import AUTOSCALE_LABEL
from imgflow.operator.batches import Context, submit_sources, track_sources
from imgflow.operator.imagejob import (
    GROUP,
    PLURAL,
    VERSION,
    SourceState,
    Summary,
    expires_at,
    failure_message,
    image_job_ref,
    is_finished,
    parse_sources,
    recorded_sources,
    rfc3339,
    status_patch,
    summarize,
)
from imgflow.operator.podcost import PodView
from imgflow.operator.scaler import Autoscaler, DeletionCosts, Target
from imgflow.operator.settings import OperatorSettings

PREFIX = "imgflow.io"
MAX_SOURCE_EVENTS = 10  # per ImageJob and kind; the status has every source anyway


# --- the operator's life ------------------------------------------------------------------------


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    # kopf passes each index by its handler's name
    autoscaled: kopf.Index[str, Target] = kwargs["autoscaled"]
    worker_pods: kopf.Index[str, PodView] = kwargs["worker_pods"]
    # Progress and the last-handled spec go to our own annotations (the CRD's status schema would
    # prune kopf's status fields); the finalizer carries our name.
    settings.persistence.finalizer = f"{PREFIX}/operator"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=PREFIX, key="last-handled-configuration"
    )
    # kopf would post an Event for every handler run (a timer runs every second); ours say more.
    settings.posting.level = logging.WARNING
    # A timer caught mid-call (a MongoDB read, a DELETE) when its ImageJob is deleted would keep the
    # finalizer for kopf's default 60 s poll; our calls take milliseconds.
    settings.background.instant_exit_timeout = 0.5
    settings.background.cancellation_polling = 1.0
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Watching Namespaces and CRDs would need cluster-wide rights we do not ask for (without them
    # kopf retries for a minute before it starts); we watch one namespace and a CRD that must be
    # installed first (Helm's crds/ is), which is checked below.
    settings.scanning.disabled = True

    config: OperatorSettings = memo["settings"]
    ctx = await Context.open(config)
    memo["ctx"] = ctx
    if not await ctx.kube.serves_image_jobs():
        await ctx.close()
        raise kopf.PermanentError(
            f"The API server does not serve {PLURAL}.{GROUP}/{VERSION}: install the ImageJob CRD "
            "(deploy/helm/imgflow/crds/) before starting the operator."
        )

    def targets() -> list[Target]:
        return [target for store in autoscaled.values() for target in store]

    def pods() -> list[PodView]:
        return [pod for store in worker_pods.values() for pod in store]

    namespace = config.operator_namespace or ""
    costs = DeletionCosts(config, ctx.redis, ctx.kube, namespace, targets, pods)
    autoscaler = Autoscaler(config, ctx.redis, ctx.kube, targets, costs)
    memo["autoscaler"] = autoscaler
    memo["tasks"] = [
        asyncio.create_task(autoscaler.run(), name="autoscaler"),
        asyncio.create_task(costs.run(), name="deletion-costs"),
    ]


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    tasks: list[asyncio.Task[None]] = memo.get("tasks", [])
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    ctx: Context | None = memo.get("ctx")
    if ctx is not None:
        await ctx.close()


@kopf.on.probe(id="autoscaler")
def autoscaler_probe(memo: kopf.Memo, **_: Any) -> dict[str, float | None]:
    """For kopf's /healthz: fails (so the pod is restarted) only if a background loop has died."""
    tasks: list[asyncio.Task[None]] = memo.get("tasks", [])
    dead = [task.get_name() for task in tasks if task.done()]
    if dead:
        raise RuntimeError(f"background task(s) stopped: {', '.join(dead)}")
    autoscaler: Autoscaler | None = memo.get("autoscaler")
    last = autoscaler.last_tick if autoscaler else None
    return {"seconds_since_last_tick": None if last is None else round(time.monotonic() - last, 1)}


# --- what the autoscaler watches ----------------------------------------------------------------


@kopf.index("apps", "v1", "deployments", labels={AUTOSCALE_LABEL: "true"})
def autoscaled(
    name: str, namespace: str | None, uid: str, spec: kopf.Spec, annotations: kopf.Annotations, **_: Any
) -> dict[str, Target]:
    selector = (spec.get("selector") or {}).get("matchLabels") or {}
    replicas = spec.get("replicas")
    return {
        name: Target(
            namespace=namespace or "",
            name=name,
            uid=uid,
            replicas=1 if replicas is None else int(replicas),  # the API's default
            annotations=dict(annotations),
            selector=dict(selector),
        )
    }


@kopf.index("v1", "pods")
def worker_pods(
    name: str, labels: kopf.Labels, annotations: kopf.Annotations, **_: Any
) -> dict[str, PodView]:
    return {name: PodView(name, dict(labels), annotations.get("controller.kubernetes.io/pod-deletion-cost"))}


# --- ImageJobs ------------------------------------------------------------------------------------


def _running(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") == "Running"


def _unfinished(status: kopf.Status, **_: Any) -> bool:
    return not is_finished(status)


def _awaiting_expiry(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    return expires_at(spec, status) is not None


@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.resume(GROUP, VERSION, PLURAL, when=_unfinished)
async def submit(
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    uid: str,
    name: str,
    namespace: str | None,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Turn every source into a job (once), and record them all in status."""
    ctx: Context = memo["ctx"]
    before = recorded_sources(status)
    try:
        states = await submit_sources(
            ctx, namespace=namespace or "", name=name, uid=uid, spec=spec, recorded=before
        )
    except (BackendUnavailable, PyMongoError) as exc:
        # Nothing is lost: what was submitted is found again by its job id on the next try.
        raise kopf.TemporaryError(
            f"Could not submit yet ({type(exc).__name__}: {exc}); retrying.", delay=5
        ) from exc
    total = len(parse_sources(spec))
    summary = summarize(total, states)
    now = datetime.now(UTC)
    patch.status.update(
        status_patch(
            summary,
            states,
            generation=int(meta.get("generation", 1)),
            started_at=status.get("startedAt") or rfc3339(now),
            now=now,
        )
    )

    fresh = [s for s in states if s.index not in before]
    refused = [s for s in fresh if s.job_id is None]
    for state in refused[:MAX_SOURCE_EVENTS]:
        kopf.event(
            body, type="Warning", reason="SourceRefused", message=f"Source {state.index}: {state.error}"
        )
    if fresh:
        queued = len(fresh) - len(refused)
        kopf.event(
            body,
            type="Normal",
            reason="Submitted",
            message=f"Submitted {queued} of {len(states)} sources as jobs"
            + (f"; {len(refused)} refused." if refused else "."),
        )
    if len(states) < total:  # the tracking timer submits them
        kopf.event(
            body,
            type="Normal",
            reason="Waiting",
            message=f"{total - len(states)} source(s) wait: the tenant has "
            f"{ctx.settings.tenant_max_unfinished} unfinished jobs (IMGFLOW_TENANT_MAX_UNFINISHED); "
            "they are submitted as its jobs finish.",
        )
    if summary.finished:
        _announce_finish(body, summary, states)


@kopf.timer(GROUP, VERSION, PLURAL, interval=1.0, backoff=2.0, when=_running)
async def track(
    body: kopf.Body,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    uid: str,
    name: str,
    namespace: str | None,
    patch: kopf.Patch,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Follow the jobs in MongoDB and bring the status up to date while the batch runs; submit
    the sources that wait for places under their tenant's cap."""
    ctx: Context = memo["ctx"]
    recorded = recorded_sources(status)
    before = sorted(recorded.values(), key=lambda s: s.index)
    total = int(status.get("total") or len(before))
    states = before
    if len(before) < total:
        states = await submit_sources(
            ctx, namespace=namespace or "", name=name, uid=uid, spec=spec, recorded=recorded
        )
    states = await track_sources(ctx, image_job_ref(namespace or "", name), states)
    if states == before:
        return
    summary = summarize(total, states)
    now = datetime.now(UTC)
    patch.status.update(
        status_patch(
            summary,
            states,
            generation=int(meta.get("generation", 1)),
            started_at=status.get("startedAt") or rfc3339(now),
            now=now,
        )
    )

    newly_failed = [
        s
        for s in states
        if s.status in (JobStatus.failed, JobStatus.cancelled)
        and (s.index not in recorded or recorded[s.index].status != s.status)
    ]
    for state in newly_failed[:MAX_SOURCE_EVENTS]:
        kopf.event(
            body, type="Warning", reason="SourceFailed", message=f"Source {state.index}: {state.error}"
        )
    old = summarize(total, before)
    if _quarter(old) != _quarter(summary) and not summary.finished:
        kopf.event(
            body,
            type="Normal",
            reason="Progress",
            message=f"{summary.progress} succeeded, {summary.failed} failed.",
        )
    if summary.finished:
        _announce_finish(body, summary, states)


@kopf.timer(GROUP, VERSION, PLURAL, interval=1.0, when=_awaiting_expiry)
async def expire(
    spec: kopf.Spec,
    status: kopf.Status,
    name: str,
    namespace: str | None,
    uid: str,
    memo: kopf.Memo,
    logger: Any,
    **_: Any,
) -> None:
    """Delete a finished ImageJob ``ttlSecondsAfterFinished`` after it finished, with the jobs it
    created."""
    when = expires_at(spec, status)
    if when is not None and datetime.now(UTC) >= when:
        ctx: Context = memo["ctx"]
        # the imgflow jobs it created, their files and records, go with it
        for job in await ctx.store.for_image_job(f"{namespace}/{name}"):
            await delete_job(job, ctx.store, ctx.storage, ctx.redis, ctx.settings)
        await ctx.kube.delete_image_job(namespace or "", name, uid)
        logger.info("deleted: finished at %s, ttlSecondsAfterFinished passed", status.get("finishedAt"))


@kopf.on.delete(GROUP, VERSION, PLURAL)
async def cancel_unfinished(name: str, namespace: str | None, memo: kopf.Memo, logger: Any, **_: Any) -> None:
    """An ImageJob deleted before its jobs finished cancels them (a running one at its worker's
    next step): nobody is left to want their outputs."""
    ctx: Context = memo["ctx"]
    try:
        jobs = await ctx.store.for_image_job(image_job_ref(namespace or "", name))
        asked = [job for job in jobs if not job.status.finished and await lifecycle.cancel(ctx, job)]
    except (BackendUnavailable, PyMongoError, RedisError) as exc:
        raise kopf.TemporaryError(
            f"Could not cancel its jobs yet ({type(exc).__name__}: {exc}); retrying.", delay=5
        ) from exc
    if asked:
        logger.info("deleted: cancelled %d unfinished job(s)", len(asked))


def _announce_finish(body: kopf.Body, summary: Summary, states: Iterable[SourceState]) -> None:
    if summary.phase == "Succeeded":
        kopf.event(
            body, type="Normal", reason="Succeeded", message=f"All {summary.total} sources were thumbnailed."
        )
    else:
        kopf.event(body, type="Warning", reason="Failed", message=failure_message(summary, list(states)))


def _quarter(summary: Summary) -> int:
    done = summary.succeeded + summary.failed
    return 4 * done // summary.total if summary.total else 4
