"""What a job's output is: its options (``ThumbnailSpec``: size, fit, gravity, format, filters,
watermark), the limits the service sets them and the refusals that follow from a source's size
and frames. Read from a request by
imgflow.core.options; carried by the job record (imgflow.core.jobs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, Field


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


# A box no larger than this on either side is made at its size from any source: the contract's
# thumbnail is 100x100 whatever was uploaded, and enlarging to such a size costs nothing to bound.
SMALL_BOX = 100


def as_made(spec: ThumbnailSpec, displayed: tuple[int, int]) -> ThumbnailSpec:
    """The spec as the worker makes it of a source of ``displayed`` size: without ``enlarge``, no
    side of the output is longer than the source's, unless the box is small (``SMALL_BOX``). The
    box-shaped fits (cover, contain, fill) shrink the box, keeping its shape, until it fits inside
    the source; inside and outside never scale the source up (their box is cut to the source's
    sides, which has that effect)."""
    width, height = displayed
    small = spec.width <= SMALL_BOX and spec.height <= SMALL_BOX
    if spec.enlarge or small or (spec.width <= width and spec.height <= height):
        return spec
    if spec.fit in (Fit.inside, Fit.outside):
        box = min(spec.width, width), min(spec.height, height)
    else:
        scale = min(width / spec.width, height / spec.height)
        box = max(1, round(spec.width * scale)), max(1, round(spec.height * scale))
    return spec.model_copy(update={"width": box[0], "height": box[1]})


def output_size(spec: ThumbnailSpec, displayed: tuple[int, int]) -> tuple[int, int]:
    """The size of the output ``spec`` makes of a source of ``displayed`` size."""
    made = as_made(spec, displayed)
    if made.fit is Fit.outside:
        return outside_size(*displayed, (made.width, made.height))
    if made.fit is Fit.inside:
        scale = min(made.width / displayed[0], made.height / displayed[1])
        return max(1, round(displayed[0] * scale)), max(1, round(displayed[1] * scale))
    return made.width, made.height


def overenlarged(specs: Sequence[ThumbnailSpec], displayed: tuple[int, int], limit: float) -> str | None:
    """Why an output with ``enlarge`` would be too large for this source (more than ``limit`` times
    its pixels), or None."""
    for index, spec in enumerate(specs):
        if not spec.enlarge:
            continue
        width, height = output_size(spec, displayed)
        if width * height > limit * displayed[0] * displayed[1]:
            which = f"variants[{index}]." if spec.name else ""
            return (
                f"{which}enlarge=true would make a {width}x{height} image from this "
                f"{displayed[0]}x{displayed[1]} source, more than {limit:g} times its pixels "
                "(IMGFLOW_MAX_ENLARGEMENT): ask for a smaller width and height, or leave enlarge out."
            )
    return None


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
    # an output larger than its source, within ``OutputLimits.max_enlargement``; False: the box
    # shrinks to the source (``as_made``), as imgproxy does by default: upscaling adds no detail,
    # only cost
    enlarge: bool = False
    # a BlurHash of the output in its result (imgflow.core.facts.Placeholder), beside the ThumbHash
    # every output gets
    blurhash: bool = False

    def animates(self, source_format: str, pages: int) -> bool:
        """Whether this output of a source of ``pages`` frames is an animation."""
        return self.animated and pages > 1 and source_format in ANIMATED_SOURCES and self.format.animates


@dataclass(frozen=True)
class OutputLimits:
    """What the service's settings allow an output (``Settings.output_limits``)."""

    max_dimension: int  # the largest width or height an output may have
    default_size: tuple[int, int] = (100, 100)  # width and height when a job gives none
    max_frames: int = 100  # of an animated output
    max_animation_pixels: int = 50_000_000  # width x height x frames of an animated output
    max_enlargement: float = 4.0  # an enlarged output's pixels, at most this many times its source's


def refusal(
    specs: Sequence[ThumbnailSpec],
    source_format: str,
    displayed: tuple[int, int],
    pages: int,
    limits: OutputLimits,
) -> tuple[str, str] | None:
    """Why these outputs cannot be made of this source, known from its header (a title and a
    sentence), or None: an ``outside`` output too large, an enlarged one beyond the bound, an
    animation with too many frames."""
    too_large = oversize([as_made(spec, displayed) for spec in specs], displayed, limits.max_dimension)
    too_large = too_large or overenlarged(specs, displayed, limits.max_enlargement)
    if too_large:
        return "Thumbnail too large", too_large
    frame_pixels = displayed[0] * displayed[1]
    animation = too_animated(
        specs, (source_format, pages, frame_pixels), limits.max_frames, limits.max_animation_pixels
    )
    if animation:
        return "Animation too large", animation
    return None
