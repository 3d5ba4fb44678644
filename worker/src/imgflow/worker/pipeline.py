"""What a thumbnail job does, in order. Read top to bottom, this list is the documentation.

Security checks (format allow-list, pixel limit) run on the header, before ``open_source``
decodes anything. The source is decoded once, shrunk on load as far as the largest output allows;
each output (a job's thumbnail, or each of its variants) then runs through ``STEPS`` and is
encoded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from imgflow.core.jobs import OutputFormat, ThumbnailSpec
from imgflow.core.probe import ImageInfo, open_buffer, probe_buffer
from imgflow.worker.steps.colour import to_srgb
from imgflow.worker.steps.crop import crop
from imgflow.worker.steps.encode import encode
from imgflow.worker.steps.filters import blur, grayscale, pixelate, sharpen
from imgflow.worker.steps.flatten import flatten
from imgflow.worker.steps.load import open_source
from imgflow.worker.steps.pad import pad
from imgflow.worker.steps.resize import resize
from imgflow.worker.steps.rotate import autorotate
from imgflow.worker.steps.watermark import prepare, watermark
from imgflow.worker.work import Work

Step = Callable[[Work], Work]

STEPS: tuple[Step, ...] = (
    crop,  # cover: crop to the box's shape where the gravity says (centre by default)
    resize,  # to the size the fit calls for (shrink-on-load already did the coarse part)
    to_srgb,  # ICC / CMYK / grey / 16-bit -> 8-bit sRGB
    autorotate,  # apply EXIF orientation
    pixelate,  # filters the job asked for, on the thumbnail
    blur,
    sharpen,
    grayscale,
    pad,  # contain: centre on a box-sized canvas
    watermark,  # the tenant's mark, on the picture as the client sees it
    flatten,  # JPEG: alpha onto white
)


@dataclass(frozen=True)
class Thumbnail:
    data: bytes
    width: int
    height: int
    format: OutputFormat


def make_thumbnails(
    data: bytes,
    specs: Sequence[ThumbnailSpec],
    *,
    max_pixels: int,
    max_side: int,
    quality: int,
    info: ImageInfo | None = None,
    watermarks: Mapping[str, bytes] | None = None,
) -> list[Thumbnail]:
    """Run the whole pipeline on an encoded source, one result per spec, in order; raises for
    anything that is not a usable image. ``watermarks``: the PNG of each watermark the specs name,
    by id."""
    info = info or probe_buffer(data, max_pixels=max_pixels, max_side=max_side)
    source = open_source(data, info, specs)
    marks = {
        mark_id: prepare(open_buffer(png, access="random")) for mark_id, png in (watermarks or {}).items()
    }
    thumbnails = []
    for spec in specs:
        work = Work(image=source, spec=spec, orientation=info.orientation, watermarks=marks)
        for step in STEPS:
            work = step(work)
        encoded = encode(work.image, spec.format, quality, spec.quality)
        thumbnails.append(Thumbnail(encoded, work.image.width, work.image.height, spec.format))
    return thumbnails


def make_thumbnail(
    data: bytes,
    spec: ThumbnailSpec,
    *,
    max_pixels: int,
    max_side: int,
    quality: int,
    info: ImageInfo | None = None,
) -> Thumbnail:
    """One output: the job of the original contract."""
    [thumbnail] = make_thumbnails(
        data, [spec], max_pixels=max_pixels, max_side=max_side, quality=quality, info=info
    )
    return thumbnail
