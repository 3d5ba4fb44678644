"""The job record: what a client asked for, where it stands, and what came of it (the outputs'
options are imgflow.core.outputs').

A job is stored in MongoDB as one document (``Job.to_document``) whose ``_id`` is the job id.
The HTTP representation (camelCase, as in the original contract) lives in the API; this module
knows nothing about HTTP.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from imgflow.core.facts import Placeholder, SourceFacts
from imgflow.core.outputs import MAX_VARIANTS, VARIANT_NAME, OutputFormat, ThumbnailSpec


class JobStatus(StrEnum):
    pending = "pending"
    processing = "processing"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.completed, JobStatus.failed, JobStatus.cancelled)


UNFINISHED = (JobStatus.pending, JobStatus.processing)


class Priority(StrEnum):
    """Which of its tenant's jobs a worker takes first (imgflow.core.schedule): ``interactive``
    (the API's default: someone is waiting) before ``batch`` (ImageJobs' default)."""

    interactive = "interactive"
    batch = "batch"


class UploadSource(BaseModel):
    kind: Literal["upload"] = "upload"
    key: str  # storage key of the original
    filename: str | None = None


class UrlSource(BaseModel):
    kind: Literal["url"] = "url"
    url: str


Source = UploadSource | UrlSource


class VariantResult(BaseModel):
    name: str
    key: str  # storage key of the variant's file
    width: int
    height: int
    bytes: int
    format: OutputFormat
    placeholder: Placeholder | None = None  # None: made before placeholders


class JobResult(BaseModel):
    """The first output (what the original contract calls the thumbnail), and every variant when
    the job asked for variants."""

    key: str  # storage key of the thumbnail
    width: int
    height: int
    bytes: int
    format: OutputFormat
    processed_at: datetime
    variants: list[VariantResult] = Field(default_factory=list)
    placeholder: Placeholder | None = None  # the thumbnail's; None: made before placeholders
    source: SourceFacts | None = None  # what the source was; None: made before facts
    # the job whose outputs these are, when this job reused them (imgflow.core.lifecycle.reuse)
    reused_from: str | None = None

    @property
    def keys(self) -> list[str]:
        return list(dict.fromkeys([self.key, *(v.key for v in self.variants)]))


def utcnow() -> datetime:
    # MongoDB keeps milliseconds; truncating here keeps what we return equal to what we store.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def new_job_id() -> str:
    return str(uuid.uuid4())


def thumbnail_key(job_id: str, fmt: OutputFormat) -> str:
    """The storage key, and the file name in ``/uploads/``, of a job's thumbnail."""
    return f"thumbnail-{job_id}.{fmt.extension}"


# what output_key makes: thumbnail-<job id>.<ext> or thumbnail-<job id>-<variant name>.<ext>
OUTPUT_NAME = re.compile(
    rf"^thumbnail-([0-9a-f-]{{36}})(?:-{VARIANT_NAME.strip('^$')})?"
    rf"\.({'|'.join(f.extension for f in OutputFormat)})$"
)


def output_key(job_id: str, index: int, spec: ThumbnailSpec) -> str:
    """The first output keeps the thumbnail's key, so original clients find it where they did;
    the other variants add their name."""
    if index == 0 or spec.name is None:
        return thumbnail_key(job_id, spec.format)
    return f"thumbnail-{job_id}-{spec.name}.{spec.format.extension}"


def original_key(job_id: str) -> str:
    return f"original-{job_id}"


def owned_original(job: Job) -> str | None:
    """The key of the original this job stored itself, which goes with it; None for a URL source
    or an original borrowed from another job (an ImageJob's ``uploadId``), which stays until that
    job expires."""
    if isinstance(job.source, UploadSource) and job.source.key == original_key(job.job_id):
        return job.source.key
    return None


class Job(BaseModel):
    job_id: str = Field(default_factory=new_job_id)
    user_id: str  # the original's label of who asked, inside the tenant
    tenant: str = "default"  # whose job it is: only keys of this tenant (or admin) see it
    key_id: str | None = None  # the API key that created it (None: auth off, or an ImageJob)
    status: JobStatus = JobStatus.pending
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)
    source: UploadSource | UrlSource = Field(discriminator="kind")
    spec: ThumbnailSpec = Field(default_factory=ThumbnailSpec)  # the first (or only) output
    # every output, named, when the job asked for variants or a preset (spec is the first)
    variants: list[ThumbnailSpec] = Field(default_factory=list, max_length=MAX_VARIANTS)
    preset: str | None = None  # the preset its variants came from
    attempts: int = 0  # times a worker started it
    given_back: int = 0  # times a stopping worker handed it back unfinished (not attempts)
    crashes: int = 0  # times its worker died while processing it and nothing else
    retries: int = 0  # times it failed for a passing reason and was scheduled again
    next_attempt_at: datetime | None = None  # while it waits for a retry
    isolate: bool = False  # its worker died holding other jobs too: it runs alone from now on
    worker: str | None = None  # the consumer that started it last
    result: JobResult | None = None
    error: str | None = None
    image_job: str | None = None  # "namespace/name" of the ImageJob that created it, if any
    priority: Priority = Priority.interactive
    cost: int = 0  # estimated worker CPU, in ms (imgflow.core.cost); 0: made before costs
    callback_url: str | None = None  # where its completion webhook goes
    expires_at: datetime | None = None  # set when it finishes: retention_s later it is deleted
    # its tenant, source bytes and options, hashed: a later identical job may reuse its outputs
    reuse_key: str | None = None
    # while a job that reused its outputs is unexpired: it and its files are kept until then
    shared_until: datetime | None = None
    # the fingerprint of the request that made it under an Idempotency-Key: a retry after that
    # request's replica died before answering is compared with it
    idempotency_print: str | None = None
    # why its outputs break ThumbnailSpec's rules, when they do (see _keep_invalid_outputs); found
    # again at every read, never stored
    invalid: str | None = Field(None, exclude=True)

    def reusable(self, now: datetime) -> bool:
        """Whether a later identical job may complete from this one's outputs: it made them itself
        and has not expired."""
        return (
            self.status is JobStatus.completed
            and self.result is not None
            and self.result.reused_from is None
            and self.expires_at is not None
            and self.expires_at > now
        )

    def files_kept(self, now: datetime) -> bool:
        """Whether its output files are still served: until it expires, or while a job that
        reused them has not."""
        until = [t for t in (self.expires_at, self.shared_until) if t is not None]
        return not until or max(until) > now

    @property
    def outputs(self) -> list[ThumbnailSpec]:
        """What the worker makes, in order."""
        return self.variants or [self.spec]

    @model_validator(mode="before")
    @classmethod
    def _keep_invalid_outputs(cls, data: Any) -> Any:
        """A stored job whose outputs break today's rules (a variant name an earlier API let
        through) still loads, with ``invalid`` saying why: clients can read it and the worker
        fails it once, where a job nobody can load would answer 500 and come back for ever."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        why: list[str] = []
        named = isinstance(data.get("variants"), list) and bool(data["variants"])
        if isinstance(data.get("spec"), dict):  # with variants, the first of them: said there
            data["spec"] = _lenient_spec(data["spec"], "spec", [] if named else why)
        if named:
            data["variants"] = [
                _lenient_spec(item, f"variants[{i}]", why) if isinstance(item, dict) else item
                for i, item in enumerate(data["variants"])
            ]
        if why:
            data["invalid"] = "; ".join(why)
        return data

    @model_validator(mode="after")
    def _finished_jobs_say_how(self) -> Job:
        if self.status is JobStatus.completed and self.result is None:
            raise ValueError("a completed job has a result")
        if self.status is JobStatus.failed and not self.error:
            raise ValueError("a failed job has an error")
        return self

    def to_document(self) -> dict[str, Any]:
        doc = self.model_dump(mode="python", exclude={"job_id"})
        doc["_id"] = self.job_id
        return doc

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Job:
        data = dict(doc)
        data["job_id"] = data.pop("_id")
        for field in ("created_at", "updated_at"):
            data[field] = _as_utc(data[field])
        for optional in ("next_attempt_at", "expires_at", "shared_until"):
            if data.get(optional):
                data[optional] = _as_utc(data[optional])
        if data.get("result"):
            data["result"] = {**data["result"], "processed_at": _as_utc(data["result"]["processed_at"])}
        return cls.model_validate(data)


def _lenient_spec(raw: dict[str, Any], where: str, why: list[str]) -> ThumbnailSpec:
    """``raw`` as a spec; if it breaks a rule, its valid fields validated and the others kept as
    they were (to show), the objections added to ``why``."""
    try:
        return ThumbnailSpec.model_validate(raw)
    except ValidationError as exc:
        errors = exc.errors()
    bad = {str(error["loc"][0]) for error in errors if error["loc"]}
    why.extend(f"{where}.{error['loc'][0]}: {error['msg']}, not {error['input']!r}" for error in errors)
    valid = ThumbnailSpec.model_validate({k: v for k, v in raw.items() if k not in bad})
    return ThumbnailSpec.model_construct(**{**dict(valid), **{k: raw[k] for k in bad if k in raw}})


def _as_utc(value: datetime) -> datetime:
    # PyMongo hands back naive datetimes unless the client is tz_aware; be explicit either way.
    return value if value.tzinfo else value.replace(tzinfo=UTC)
