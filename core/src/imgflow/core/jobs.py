"""The job: what a client asked for, where it stands, and what came of it.

A job is stored in MongoDB as one document (``Job.to_document``) whose ``_id`` is the job id.
The HTTP representation (camelCase, as in the original contract) lives in the API; this module
knows nothing about HTTP.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator


class JobStatus(StrEnum):
    pending = "pending"
    processing = "processing"
    completed = "completed"
    failed = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.completed, JobStatus.failed)


UNFINISHED = (JobStatus.pending, JobStatus.processing)


class Fit(StrEnum):
    """How the source is fitted into width x height (the names sharp and the original use)."""

    cover = "cover"  # fill the box, centre-crop the overflow
    contain = "contain"  # fit inside the box, pad to exactly width x height
    fill = "fill"  # stretch to exactly width x height, ignoring the aspect ratio
    inside = "inside"  # fit inside the box, keep the aspect ratio, no padding
    outside = "outside"  # cover the box, keep the aspect ratio, no crop (one side may overflow)


# Where a crop (fit cover) keeps the picture: a compass point, or a focal point "fp:x,y" given as
# fractions of the width and height of the image as displayed (after EXIF rotation).
COMPASS: dict[str, tuple[float, float]] = {
    "centre": (0.5, 0.5),
    "north": (0.5, 0.0),
    "south": (0.5, 1.0),
    "east": (1.0, 0.5),
    "west": (0.0, 0.5),
    "north-east": (1.0, 0.0),
    "north-west": (0.0, 0.0),
    "south-east": (1.0, 1.0),
    "south-west": (0.0, 1.0),
}
# or where libvips finds the picture most interesting (smartcrop): its attention model (skin,
# saturation, edges) or the region of most entropy
SMART = ("attention", "entropy")
_FRACTION = r"(0(\.\d{1,4})?|1(\.0{1,4})?)"
GRAVITY_PATTERN = rf"^({'|'.join((*COMPASS, *SMART))}|fp:{_FRACTION},{_FRACTION})$"


def focal_point(gravity: str) -> tuple[float, float]:
    """The point (fractions of the displayed width and height) a cover crop is centred on."""
    if gravity.startswith("fp:"):
        x, y = gravity.removeprefix("fp:").split(",")
        return float(x), float(y)
    return COMPASS[gravity]


def oversize(specs: Sequence[ThumbnailSpec], displayed: tuple[int, int], limit: int) -> str | None:
    """Why this source cannot get these outputs (``outside`` would make a side longer than
    ``limit``), or None."""
    for spec in specs:
        if spec.fit is not Fit.outside:
            continue
        width, height = outside_size(*displayed, (spec.width, spec.height))
        if max(width, height) > limit:
            which = f"variant {spec.name!r}: " if spec.name else ""
            return (
                f"{which}fit=outside would make a {width}x{height} image from this "
                f"{displayed[0]}x{displayed[1]} source; the longest side allowed is {limit} "
                "(IMGFLOW_MAX_OUTPUT_DIMENSION)."
            )
    return None


ANIMATED_SOURCES = ("gif", "webp")


def too_animated(
    specs: Sequence[ThumbnailSpec],
    source: tuple[str, int, int],
    max_frames: int,
    max_pixels: int,
) -> str | None:
    """Why an animated output of this source (format, frames, pixels of a frame) is refused, or
    None: every frame is decoded at once, so the frames and their pixels are bounded."""
    source_format, pages, frame_pixels = source
    if not any(spec.animates(source_format, pages) for spec in specs):
        return None
    if pages > max_frames:
        why = f"this animation has {pages} frames, more than the {max_frames} allowed (IMGFLOW_MAX_FRAMES)"
    elif pages * frame_pixels > max_pixels:
        why = (
            f"its {pages} frames hold {pages * frame_pixels:,} pixels, more than the {max_pixels:,} allowed "
            "(IMGFLOW_MAX_ANIMATION_PIXELS)"
        )
    else:
        return None
    return f"An animated output is refused: {why}. Ask for animated=false to get the first frame."


def outside_size(width: int, height: int, box: tuple[int, int]) -> tuple[int, int]:
    """What ``outside`` makes of a ``width`` x ``height`` image: the smallest size with its aspect
    ratio that covers the box."""
    box_w, box_h = box
    scale = max(box_w / width, box_h / height)
    return max(box_w, round(width * scale)), max(box_h, round(height * scale))


class OutputFormat(StrEnum):
    jpeg = "jpeg"
    png = "png"
    webp = "webp"
    avif = "avif"  # AV1 in HEIF, through libheif
    gif = "gif"

    @property
    def animates(self) -> bool:
        """Whether imgflow writes animations in this format: GIF and WebP. (libvips writes the
        frames of an AVIF as a collection of still images, not as an AVIF sequence.)"""
        return self in (OutputFormat.gif, OutputFormat.webp)

    @property
    def extension(self) -> str:
        return "jpg" if self is OutputFormat.jpeg else self.value

    @property
    def media_type(self) -> str:
        return f"image/{self.value}"


# a variant's name: it goes into the file's name (thumbnail-<job id>-<name>.<ext>) and URLs
VARIANT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_@-]{0,31}$"
MAX_VARIANTS = 10

MAX_BLUR = 50.0
MAX_SHARPEN = 10.0
MAX_PIXELATE = 256
MAX_WATERMARK_MARGIN = 1000
WATERMARK_ID = r"^wm_[0-9a-f]{16}$"  # imgflow.core.watermarks makes them


class ThumbnailSpec(BaseModel):
    """One output a job asks for (a job has one, or up to ``MAX_VARIANTS`` named variants); read
    and validated once, at the door (``imgflow.core.options``)."""

    name: str | None = Field(None, pattern=VARIANT_NAME)  # set for variants
    width: int = Field(100, ge=1, le=8192)
    height: int = Field(100, ge=1, le=8192)
    fit: Fit = Fit.cover
    format: OutputFormat = OutputFormat.jpeg
    gravity: str = Field("centre", pattern=GRAVITY_PATTERN)  # what a cover crop keeps
    # filters, on the thumbnail (bounded: their cost grows with these)
    blur: float | None = Field(None, ge=0.3, le=MAX_BLUR)  # gaussian sigma, in output pixels
    sharpen: float | None = Field(None, ge=0.3, le=MAX_SHARPEN)  # sigma of the unsharp mask
    pixelate: int | None = Field(None, ge=2, le=MAX_PIXELATE)  # block size, in output pixels
    grayscale: bool = False
    # encoder quality (JPEG, WebP, AVIF; PNG is lossless); None: the format's default
    quality: int | None = Field(None, ge=1, le=100)
    # a tenant's watermark (imgflow.core.watermarks) composited onto the output, where the
    # position says (a compass point), ``margin`` output pixels in from the edges, its width
    # ``scale`` times the output's
    watermark: str | None = Field(None, pattern=WATERMARK_ID)
    watermark_position: str = Field("south-east", pattern=rf"^({'|'.join(COMPASS)})$")
    watermark_margin: int = Field(16, ge=0, le=MAX_WATERMARK_MARGIN)
    watermark_opacity: float = Field(1.0, ge=0.05, le=1.0)
    watermark_scale: float = Field(0.25, ge=0.01, le=1.0)
    # an animated GIF or WebP source stays animated when the format can carry it; False: the first
    # frame only
    animated: bool = True

    def animates(self, source_format: str, pages: int) -> bool:
        """Whether this output of a source of ``pages`` frames is an animation."""
        return self.animated and pages > 1 and source_format in ANIMATED_SOURCES and self.format.animates


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
    callback_url: str | None = None  # where its completion webhook goes
    expires_at: datetime | None = None  # set when it finishes: retention_s later it is deleted
    # why its outputs break ThumbnailSpec's rules, when they do (see _keep_invalid_outputs); found
    # again at every read, never stored
    invalid: str | None = Field(None, exclude=True)

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
        for optional in ("next_attempt_at", "expires_at"):
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
