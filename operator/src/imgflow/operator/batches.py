"""ImageJob sources in, imgflow jobs out: through the same ``lifecycle.accept`` the HTTP API uses.

Idempotent by construction: a source's job id is derived from the ImageJob's uid and the source's
index, so a second pass (an operator restart, a retried handler) finds the job it submitted before
and records it instead of submitting it again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from faststream.redis import RedisBroker
from pymongo.errors import DuplicateKeyError
from redis.asyncio import Redis

from imgflow.core import cost, lifecycle, quota
from imgflow.core.backends import Backends
from imgflow.core.fetch import FetchRefused, check_url
from imgflow.core.jobs import Job, JobStatus, Priority, UploadSource, UrlSource, original_key
from imgflow.core.options import InvalidOption, Outputs
from imgflow.core.storage import NotFound, Storage
from imgflow.core.store import JobStore
from imgflow.core.watermarks import WatermarkStore, unusable_watermark
from imgflow.operator.imagejob import (
    SourceItem,
    SourceState,
    check_tenant,
    image_job_ref,
    job_id_for,
    job_outputs,
    namespace_tenant,
    parse_sources,
    refresh,
    refused,
    submitted,
)
from imgflow.operator.kube import Kube
from imgflow.operator.settings import OperatorSettings


@dataclass
class Context:
    """What the handlers share, kept in kopf's memo for the operator's lifetime."""

    settings: OperatorSettings
    backends: Backends
    store: JobStore
    storage: Storage
    broker: RedisBroker
    redis: Redis
    kube: Kube
    watermarks: WatermarkStore

    @classmethod
    async def open(cls, settings: OperatorSettings) -> Context:
        b = Backends.open(settings)
        await b.broker.connect()
        return cls(settings, b, b.store, b.storage, b.broker, b.redis, Kube(), WatermarkStore(b.db))

    async def close(self) -> None:
        await self.backends.aclose()


class Refused(Exception):
    """A source that will not be submitted; the text tells the ImageJob's author why."""


async def resolve_source(
    ctx: Context, item: SourceItem, tenant: str, user_id: str
) -> UrlSource | UploadSource:
    if item.url is not None:
        try:
            # the worker checks again when it fetches, per hop
            await check_url(item.url, ctx.settings)
        except FetchRefused as exc:
            raise Refused(str(exc)) from exc
        return UrlSource(url=item.url)
    upload_id = item.upload_id or ""
    upload = await ctx.store.get(upload_id)
    # One message for "no such upload" and "someone else's": an ImageJob must not probe other
    # users or tenants.
    if upload is None or upload.user_id != user_id or upload.tenant != tenant:
        raise Refused(
            f"Upload {upload_id} was not found for user {user_id!r} of tenant {tenant!r}: uploadId "
            "must be the jobId of an image this user uploaded through the HTTP API."
        )
    try:
        await ctx.storage.stat(original_key(upload_id))
    except NotFound as exc:
        raise Refused(f"Upload {upload_id} has no stored original any more; upload the image again.") from exc
    filename = upload.source.filename if isinstance(upload.source, UploadSource) else None
    return UploadSource(key=original_key(upload_id), filename=filename)


async def submit_sources(
    ctx: Context,
    *,
    namespace: str,
    name: str,
    uid: str,
    spec: Mapping[str, Any],
    recorded: Mapping[int, SourceState],
) -> list[SourceState]:
    """Submit every source not yet submitted, as jobs of the namespace's tenant; returns the state
    of every source, in order, up to the first that found its tenant at its cap of unfinished jobs
    (it and those after it are submitted by a later pass)."""
    user_id = str(spec["userId"])
    tenant = namespace_tenant(namespace, ctx.settings.namespace_tenants, ctx.settings.default_tenant)
    try:
        check_tenant(spec, namespace, tenant)
        outputs = job_outputs(spec, ctx.settings.presets, ctx.settings.output_limits)
        refusal = await unusable_watermark(outputs, tenant, ctx.watermarks)
    except InvalidOption as exc:  # every source is refused with it
        outputs, refusal = Outputs([]), str(exc)
    states: list[SourceState] = []
    for item in parse_sources(spec):
        known = recorded.get(item.index)
        if known is not None and (known.job_id or known.status is JobStatus.failed):
            states.append(known)
            continue
        job_id = job_id_for(uid, item.index)
        job = await ctx.store.get(job_id)
        if job is None:
            try:
                if refusal:
                    raise Refused(refusal)
                source = await resolve_source(ctx, item, tenant, user_id)
            except Refused as exc:
                states.append(refused(item, str(exc)))
                continue
            job = Job(
                job_id=job_id,
                user_id=user_id,
                tenant=tenant,
                source=source,
                spec=outputs.specs[0],
                variants=outputs.specs if outputs.named else [],
                preset=outputs.preset,
                image_job=image_job_ref(namespace, name),
                priority=Priority.batch,
                cost=cost.estimate(outputs.specs, cost.UNSEEN_SOURCE),
            )
            try:
                job = await lifecycle.accept(ctx, job, take_place=True)
            except quota.TenantFull:
                break
            except DuplicateKeyError:  # another pass got there first: theirs is ours
                job = await ctx.store.get(job_id) or job
        states.append(submitted(item, job))
    return states


async def track_sources(ctx: Context, ref: str, states: Sequence[SourceState]) -> list[SourceState]:
    """The states, updated from MongoDB; a job that vanished from it counts as failed."""
    jobs = {job.job_id: job for job in await ctx.store.for_image_job(ref)}
    fresh = refresh(states, jobs)
    return [
        SourceState(s.index, s.source, s.job_id, JobStatus.failed, f"Job {s.job_id} no longer exists.")
        if s.job_id and s.job_id not in jobs and not s.status.finished
        else s
        for s in fresh
    ]
