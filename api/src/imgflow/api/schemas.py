"""The HTTP shapes of jobs: camelCase, as the original contract defines them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel, to_snake

from imgflow.api.signed_urls import Signed
from imgflow.core import options
from imgflow.core.facts import Placeholder, SourceFacts
from imgflow.core.jobs import Job, JobStatus, Priority
from imgflow.core.outputs import Fit, OutputFormat, ThumbnailSpec

UPLOADS_PREFIX = "/uploads"


def _iso_z(value: datetime) -> str:
    # "2024-03-07T12:00:00.123Z": UTC with a Z, as the original answered.
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Timestamp = Annotated[datetime, PlainSerializer(_iso_z, return_type=str)]


class Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True)


class Accepted(Camel):
    job_id: str = Field(description="Id of the new job; poll GET /api/image-processing/jobs/{jobId}")
    status: JobStatus = Field(
        description="'pending': accepted, queued, not yet done; 'completed' when the job reused the "
        "outputs of an identical finished job of the tenant (result.reusedFrom)"
    )
    created_at: Timestamp


class Options(Camel):
    name: str | None = Field(None, description="The variant's name (variants only)")
    width: int
    height: int
    fit: Fit
    format: OutputFormat
    gravity: str = "centre"
    blur: float | None = None
    sharpen: float | None = None
    pixelate: int | None = None
    grayscale: bool | None = Field(None, description="Present (true) when asked for")
    quality: int | None = None
    animated: bool | None = Field(None, description="Present (false) when the job asked for the first frame")
    enlarge: bool | None = Field(
        None, description="Present (true) when the output may be larger than the source"
    )
    blurhash: bool | None = Field(
        None, description="Present (true) when the output's placeholder has a BlurHash"
    )
    watermark: str | None = None
    watermark_position: str | None = Field(None, description="With a watermark: where it goes")
    watermark_margin: int | None = None
    watermark_opacity: float | None = None
    watermark_scale: float | None = None


SIGNED_URL = (
    "The same file at a URL that needs no API key (for <img src>), until signedUrlExpiresAt "
    "(present when the service signs URLs: IMGFLOW_URL_SIGNING_KEY)"
)


class PlaceholderView(Placeholder, Camel):
    """What a page can show before the output arrives."""


class SourceView(SourceFacts, Camel):
    """The source image, as its header describes it."""


def _placeholder(placeholder: Placeholder | None) -> PlaceholderView | None:
    return None if placeholder is None else PlaceholderView(**placeholder.model_dump())


class VariantView(Camel):
    url: str = Field(description="Path of the variant's file on this service")
    signed_url: str | None = Field(None, description=SIGNED_URL)
    width: int
    height: int
    bytes: int
    format: OutputFormat
    placeholder: PlaceholderView | None = Field(None, description="Absent for jobs made before placeholders")


class Result(Camel):
    thumbnail_url: str = Field(
        description="Path of the thumbnail (with variants: the first) on this service; GET it for the bytes"
    )
    signed_url: str | None = Field(None, description=SIGNED_URL)
    signed_url_expires_at: Timestamp | None = Field(
        None, description="When the signed URLs stop working; GET .../jobs/{jobId}/urls signs new ones"
    )
    processed_at: Timestamp
    width: int
    height: int
    bytes: int
    format: OutputFormat
    variants: dict[str, VariantView] | None = Field(
        None,
        description="Every variant by name, in the order asked (present when the job asked for variants)",
    )
    placeholder: PlaceholderView | None = Field(
        None,
        description="The thumbnail's (with variants: the first's); absent for jobs made before placeholders",
    )
    source: SourceView | None = Field(
        None, description="The source image's facts; absent for jobs made before them"
    )
    reused_from: str | None = Field(
        None,
        description="Present when the job completed at once from the outputs of this earlier job of "
        "the tenant (the same source bytes and options; opt out with reuse=false): its files are shared",
    )


class JobView(Camel):
    job_id: str
    user_id: str
    status: JobStatus
    created_at: Timestamp
    updated_at: Timestamp
    options: Options = Field(description="The thumbnail's options (with variants: the first's)")
    variants: list[Options] | None = Field(None, description="Present when the job asked for variants")
    preset: str | None = Field(None, description="The preset the variants came from, if any")
    source: str = Field(description="'upload', or the URL the image was fetched from")
    result: Result | None = Field(None, description="Present once the job is completed")
    error: str | None = Field(
        None,
        description="Present when the job failed: what went wrong; while a retry waits, why the last "
        "try did not work",
    )
    attempts: int = Field(0, description="Times a worker started the job")
    priority: Priority = Field(
        Priority.interactive,
        description="interactive (the API's default) or batch (ImageJobs'): which of "
        "the tenant's jobs run first within its share of the workers",
    )
    cost: int | None = Field(
        None,
        description="Estimated worker CPU, in ms, known when the job was accepted: what the "
        "tenant's share of the workers is counted in (absent for jobs made before costs)",
    )
    expires_at: Timestamp | None = Field(
        None, description="Once finished: when the job and its files are deleted (then it answers 404)"
    )
    next_attempt_at: Timestamp | None = Field(
        None, description="While the job waits for a retry (status pending): when it is tried again"
    )

    @classmethod
    def of(cls, job: Job, signed: Signed | None = None) -> JobView:
        """The job as clients see it; ``signed``: its outputs' signed URLs (imgflow.api.signed_urls)."""
        result = None
        urls = signed.urls if signed is not None else {}
        if job.result is not None:
            result = Result(
                thumbnail_url=f"{UPLOADS_PREFIX}/{job.result.key}",
                signed_url=urls.get(job.result.key),
                signed_url_expires_at=signed.expires_at if signed is not None else None,
                processed_at=job.result.processed_at,
                width=job.result.width,
                height=job.result.height,
                bytes=job.result.bytes,
                format=job.result.format,
                reused_from=job.result.reused_from,
                placeholder=_placeholder(job.result.placeholder),
                source=None if job.result.source is None else SourceView(**job.result.source.model_dump()),
                variants={
                    v.name: VariantView(
                        url=f"{UPLOADS_PREFIX}/{v.key}",
                        signed_url=urls.get(v.key),
                        width=v.width,
                        height=v.height,
                        bytes=v.bytes,
                        format=v.format,
                        placeholder=_placeholder(v.placeholder),
                    )
                    for v in job.result.variants
                }
                or None,
            )
        return cls(
            job_id=job.job_id,
            user_id=job.user_id,
            status=job.status,
            created_at=job.created_at,
            updated_at=job.updated_at,
            options=_options(job.spec),
            variants=[_options(spec) for spec in job.variants] or None,
            preset=job.preset,
            source=job.source.url if job.source.kind == "url" else "upload",
            result=result,
            error=job.error,
            attempts=job.attempts,
            priority=job.priority,
            cost=job.cost or None,
            expires_at=job.expires_at,
            next_attempt_at=job.next_attempt_at if job.status is JobStatus.pending else None,
        )


def _options(spec: ThumbnailSpec) -> Options:
    shown = spec.model_dump(exclude=set() if spec.watermark else WATERMARK_PLACEMENT)
    return Options(
        **{
            **shown,
            "grayscale": spec.grayscale or None,
            "animated": None if spec.animated else False,
            "enlarge": spec.enlarge or None,
            "blurhash": spec.blurhash or None,
        }
    )


# shown beside a watermark only
WATERMARK_PLACEMENT = {to_snake(name) for name in options.WATERMARK_PLACEMENT}


class JobList(Camel):
    jobs: list[JobView]
    next_cursor: str | None = Field(
        None, description="Pass as ?cursor= to get the next page; null on the last page"
    )
