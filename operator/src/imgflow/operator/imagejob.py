"""ImageJob resources: reading their spec and computing their status. Pure functions, no I/O.

An ImageJob's ``status.sources[i]`` reports on ``spec.sources[i]``: the imgflow job made of it
and where that job stands. Job ids are derived from the ImageJob's uid and the source's index, so
an operator that restarts half-way finds the jobs it already submitted instead of submitting twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from imgflow.core.jobs import Job, JobStatus
from imgflow.core.options import (
    InvalidOption,
    Outputs,
    as_fields,
    read_preset,
    read_spec,
    read_variants,
)
from imgflow.core.outputs import OutputLimits, ThumbnailSpec

GROUP = "imgflow.io"
VERSION = "v1alpha1"
PLURAL = "imagejobs"

Phase = Literal["Pending", "Running", "Succeeded", "Failed"]
FINISHED_PHASES: tuple[Phase, ...] = ("Succeeded", "Failed")
ERROR_MAX = 512  # characters of a source's error kept in status

# what the CRD's schema allows; the installation's own limit is applied when a batch is submitted
CRD_LIMITS = OutputLimits(max_dimension=4096)

# Job ids of ImageJob sources are uuid5(uid/index) in this namespace: stable across restarts.
_JOB_IDS = uuid.UUID("6f1c3e0a-4b8d-5e2f-9a7c-1d3b5f7e9a0c")


@dataclass(frozen=True)
class SourceItem:
    """One entry of ``spec.sources``: exactly one of ``url`` and ``upload_id`` is set (the CRD says)."""

    index: int
    url: str | None = None
    upload_id: str | None = None

    @property
    def shown(self) -> str:
        return self.url or self.upload_id or ""


@dataclass(frozen=True)
class SourceState:
    """One entry of ``status.sources``."""

    index: int
    source: str
    job_id: str | None
    status: JobStatus
    error: str | None = None

    def to_status(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"index": self.index, "source": self.source, "status": self.status.value}
        if self.job_id:
            entry["jobId"] = self.job_id
        if self.error:
            # Short enough that a status of 1000 failed sources stays far below etcd's object limit.
            entry["error"] = self.error if len(self.error) <= ERROR_MAX else self.error[: ERROR_MAX - 1] + "…"
        return entry

    @classmethod
    def from_status(cls, entry: Mapping[str, Any]) -> SourceState:
        return cls(
            index=int(entry["index"]),
            source=str(entry.get("source", "")),
            job_id=entry.get("jobId") or None,
            status=JobStatus(entry.get("status", JobStatus.pending.value)),
            error=entry.get("error") or None,
        )


def image_job_ref(namespace: str, name: str) -> str:
    """What ``Job.image_job`` holds for jobs of this ImageJob."""
    return f"{namespace}/{name}"


def namespace_tenant(namespace: str, tenants: Mapping[str, str], default: str) -> str:
    """The tenant an ImageJob acts for: its namespace's, from the operator's own settings (whoever
    may create ImageJobs in a namespace may not choose another tenant)."""
    return tenants.get(namespace, default)


def check_tenant(spec: Mapping[str, Any], namespace: str, tenant: str) -> None:
    """``spec.tenant`` may only repeat the namespace's tenant; raises InvalidOption otherwise."""
    named = spec.get("tenant")
    if named and named != tenant:
        raise InvalidOption(
            f"spec.tenant {named!r} is not the tenant of namespace {namespace!r}: its ImageJobs act for "
            f"tenant {tenant!r} (IMGFLOW_NAMESPACE_TENANTS, the chart's operator.namespaceTenants)."
        )


def job_id_for(uid: str, index: int) -> str:
    return str(uuid.uuid5(_JOB_IDS, f"{uid}/{index}"))


def parse_sources(spec: Mapping[str, Any]) -> list[SourceItem]:
    return [
        SourceItem(index=i, url=item.get("url") or None, upload_id=item.get("uploadId") or None)
        for i, item in enumerate(spec.get("sources") or [])
    ]


def thumbnail_spec(spec: Mapping[str, Any], limits: OutputLimits = CRD_LIMITS) -> ThumbnailSpec:
    """The thumbnail every source gets; the CRD's defaults are ThumbnailSpec's defaults."""
    thumb = (spec.get("operations") or {}).get("thumbnail") or {}
    return read_spec(as_fields(thumb), limits, at="operations.thumbnail.")


def job_outputs(
    spec: Mapping[str, Any], presets: Mapping[str, list[dict[str, Any]]], limits: OutputLimits
) -> Outputs:
    """What every source gets: ``operations.thumbnail``, or the named ``operations.variants``, or
    the service's ``operations.preset``; raises InvalidOption naming the field."""
    operations = spec.get("operations") or {}
    variants, preset = operations.get("variants"), operations.get("preset")
    if variants and preset:
        raise InvalidOption("Give operations.variants or operations.preset, not both.")
    if preset:
        return read_preset(str(preset), presets, limits, where="operations.preset")
    if variants:
        return Outputs(read_variants(variants, limits, where="operations.variants"), named=True)
    return Outputs([thumbnail_spec(spec, limits)])


def recorded_sources(status: Mapping[str, Any]) -> dict[int, SourceState]:
    return {s.index: s for s in map(SourceState.from_status, status.get("sources") or [])}


def submitted(item: SourceItem, job: Job) -> SourceState:
    return SourceState(item.index, item.shown, job.job_id, job.status, job.error)


def refused(item: SourceItem, reason: str) -> SourceState:
    """A source that was never submitted, because policy or a missing upload forbade it."""
    return SourceState(item.index, item.shown, None, JobStatus.failed, reason)


def refresh(states: Iterable[SourceState], jobs: Mapping[str, Job]) -> list[SourceState]:
    """The states, updated from the jobs (by id) where those have news."""
    fresh = []
    for state in states:
        job = jobs.get(state.job_id) if state.job_id else None
        if job is not None and (job.status, job.error) != (state.status, state.error):
            state = SourceState(state.index, state.source, state.job_id, job.status, job.error)
        fresh.append(state)
    return fresh


@dataclass(frozen=True)
class Summary:
    total: int
    succeeded: int
    failed: int

    @property
    def finished(self) -> bool:
        return self.succeeded + self.failed >= self.total

    @property
    def phase(self) -> Phase:
        if not self.finished:
            return "Running"
        return "Failed" if self.failed else "Succeeded"

    @property
    def progress(self) -> str:
        return f"{self.succeeded}/{self.total}"


def summarize(total: int, states: Sequence[SourceState]) -> Summary:
    """Counts over the sources; a source not yet recorded counts as unfinished, a cancelled one as
    failed."""
    succeeded = sum(1 for s in states if s.status is JobStatus.completed)
    failed = sum(1 for s in states if s.status in (JobStatus.failed, JobStatus.cancelled))
    return Summary(total=total, succeeded=succeeded, failed=failed)


def rfc3339(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def status_patch(
    summary: Summary,
    states: Sequence[SourceState],
    *,
    generation: int,
    started_at: str,
    now: datetime,
    finished_at: str | None = None,
) -> dict[str, Any]:
    """The whole ``status`` for these states; ``finishedAt`` (kept if already set) and a condition
    once all finished."""
    patch: dict[str, Any] = {
        "phase": summary.phase,
        "total": summary.total,
        "succeeded": summary.succeeded,
        "failed": summary.failed,
        "progress": summary.progress,
        "startedAt": started_at,
        "observedGeneration": generation,
        "sources": [s.to_status() for s in sorted(states, key=lambda s: s.index)],
    }
    if summary.finished:
        patch["finishedAt"] = finished_at or rfc3339(now)
        patch["conditions"] = [finished_condition(summary, states, generation, patch["finishedAt"])]
    return patch


def finished_condition(
    summary: Summary, states: Sequence[SourceState], generation: int, when: str
) -> dict[str, Any]:
    """A Job-like condition: ``Complete`` when every source succeeded, else ``Failed``."""
    if summary.phase == "Succeeded":
        kind, reason = "Complete", "AllSucceeded"
        message = f"All {summary.total} sources were thumbnailed."
    else:
        kind, reason = "Failed", "SourcesFailed"
        message = failure_message(summary, states)
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": when,
        "observedGeneration": generation,
    }


def failure_message(summary: Summary, states: Sequence[SourceState]) -> str:
    first = next(
        (
            s
            for s in sorted(states, key=lambda s: s.index)
            if s.status.finished and s.status is not JobStatus.completed
        ),
        None,
    )
    detail = (
        f" First: source {first.index} ({first.source}): {first.error or first.status.value}" if first else ""
    )
    return f"{summary.failed} of {summary.total} sources failed.{detail}"


def is_finished(status: Mapping[str, Any]) -> bool:
    return status.get("phase") in FINISHED_PHASES


def expires_at(spec: Mapping[str, Any], status: Mapping[str, Any]) -> datetime | None:
    """When a finished ImageJob is to be deleted (``ttlSecondsAfterFinished``), if ever."""
    ttl = spec.get("ttlSecondsAfterFinished")
    finished = status.get("finishedAt")
    if ttl is None or not finished or not is_finished(status):
        return None
    return datetime.fromisoformat(str(finished).replace("Z", "+00:00")) + timedelta(seconds=int(ttl))
