"""What a thumbnail job does, in order. Read top to bottom, these lists are the documentation.

Security checks (format allow-list, pixel limit) run on the header, before anything is decoded.
The source is decoded once, shrunk on load as far as the largest output allows; each output (a
job's thumbnail, or each of its variants) then runs through one lane's steps and is encoded:

- ``PLAIN_JPEG_STEPS`` when the job is a JPEG made into JPEGs by a crop and a resize alone
  (``plain_jpeg.takes``): TurboJPEG decodes it and Pillow does the rest, the same geometry
  (``steps/geometry.py``) at a fraction of libvips' fixed cost per image;
- ``STEPS``, libvips', for everything else, and for the JPEGs TurboJPEG turns away.

Each output's placeholder (placeholder.py) is made from its pixels in memory, just before they are
encoded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import pyvips
from PIL import Image

from imgflow.core.facts import Placeholder
from imgflow.core.outputs import OutputFormat, ThumbnailSpec
from imgflow.core.probe import ImageInfo, open_buffer, probe_buffer
from imgflow.worker import placeholder, plain_jpeg
from imgflow.worker.steps.colour import to_srgb
from imgflow.worker.steps.crop import crop, steady
from imgflow.worker.steps.encode import encode
from imgflow.worker.steps.filters import blur, grayscale, pixelate, sharpen
from imgflow.worker.steps.flatten import flatten
from imgflow.worker.steps.load import animates, open_source
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

PLAIN_JPEG_STEPS: tuple[Callable[[plain_jpeg.Picture], plain_jpeg.Picture], ...] = (
    plain_jpeg.crop,  # cover: the rectangle to keep, where the gravity says (no pixels moved yet)
    plain_jpeg.resize,  # lanczos3 from that rectangle to the size the fit calls for
    plain_jpeg.autorotate,  # apply EXIF orientation
    plain_jpeg.pad,  # contain: centre on a white box-sized canvas
)


@dataclass(frozen=True)
class Thumbnail:
    data: bytes
    width: int
    height: int
    format: OutputFormat
    placeholder: Placeholder


def make_thumbnails(
    data: bytes,
    specs: Sequence[ThumbnailSpec],
    *,
    max_pixels: int,
    max_side: int,
    quality: int,
    info: ImageInfo | None = None,
    watermarks: Mapping[str, bytes] | None = None,
    between: Callable[[], None] = lambda: None,
) -> list[Thumbnail]:
    """Run the whole pipeline on an encoded source, one result per spec, in order; raises for
    anything that is not a usable image. ``watermarks``: the PNG of each watermark the specs name,
    by id. ``between`` is called between one output and the next (it may raise to stop)."""
    info = info or probe_buffer(data, max_pixels=max_pixels, max_side=max_side)
    if not plain_jpeg.takes(info, specs):
        return libvips_thumbnails(data, info, specs, quality=quality, watermarks=watermarks, between=between)
    if (plain := plain_jpeg_thumbnails(data, info, specs, quality, between)) is not None:
        return plain
    # TurboJPEG refused the file (damaged, or read otherwise than the probe): libvips decodes it,
    # without TurboJPEG trying the same bytes again
    return libvips_thumbnails(data, info, specs, quality=quality, turbo=False, between=between)


def plain_jpeg_thumbnails(
    data: bytes,
    info: ImageInfo,
    specs: Sequence[ThumbnailSpec],
    quality: int,
    between: Callable[[], None] = lambda: None,
) -> list[Thumbnail] | None:
    """Every output through ``PLAIN_JPEG_STEPS``, for a job ``plain_jpeg.takes``; None when the
    libvips steps must take it."""
    pictures = plain_jpeg_pictures(data, info, specs)
    if pictures is None:
        return None
    thumbnails: list[Thumbnail] = []
    for spec, picture in zip(specs, pictures, strict=True):
        if thumbnails:
            between()
        look = placeholder.of_pillow(picture, with_blurhash=spec.blurhash)
        encoded, width, height = plain_jpeg.encode(picture, spec.quality or quality)
        thumbnails.append(Thumbnail(encoded, width, height, OutputFormat.jpeg, look))
    return thumbnails


def plain_jpeg_pictures(
    data: bytes, info: ImageInfo, specs: Sequence[ThumbnailSpec]
) -> Iterator[Image.Image] | None:
    """Each spec's picture before encoding, made as it is asked for (one output's picture at a
    time, as memory.py counts them); None when TurboJPEG does not decode the picture the probe saw."""
    source = plain_jpeg.decode(data, info, specs)
    if source is None:
        return None
    return (_plain_steps(plain_jpeg.Picture(source, spec, info.orientation)) for spec in specs)


def libvips_thumbnails(
    data: bytes,
    info: ImageInfo,
    specs: Sequence[ThumbnailSpec],
    *,
    quality: int,
    watermarks: Mapping[str, bytes] | None = None,
    turbo: bool = True,
    between: Callable[[], None] = lambda: None,
) -> list[Thumbnail]:
    """Every output through libvips' ``STEPS``: any job, whichever lane it would take.
    ``turbo``: whether TurboJPEG may decode the source (``open_source``); ``between`` as for
    ``make_thumbnails``."""
    source = open_source(data, info, specs, turbo=turbo)
    marks = {
        mark_id: prepare(open_buffer(png, access="random")) for mark_id, png in (watermarks or {}).items()
    }
    animation = animates(info, specs)
    frame_height = int(source.get("page-height")) if animation else source.height
    thumbnails: list[Thumbnail] = []
    for spec in specs:
        if thumbnails:
            between()
        if spec.animates(info.format, info.pages):
            frames = _split(source, frame_height)
            steady_spec = steady(Work(frames[0], spec, info.orientation))
            image = _animation(
                source, [_steps(Work(frame, steady_spec, info.orientation, marks)) for frame in frames]
            )
        else:  # a still, or the first frame of an animation
            first = _split(source, frame_height)[0] if animation else source
            image = _steps(Work(first, spec, info.orientation, marks))
        # made once, in memory, for the encoder and the placeholder both (the steps are lazy: read
        # twice, they would run twice)
        image = image.copy_memory()
        look = placeholder.of_vips(image, with_blurhash=spec.blurhash)
        encoded = encode(image, spec.format, quality, spec.quality)
        thumbnails.append(Thumbnail(encoded, image.width, image.height // _frames(image), spec.format, look))
    return thumbnails


def _steps(work: Work) -> pyvips.Image:
    for step in STEPS:
        work = step(work)
    return work.image


def _plain_steps(picture: plain_jpeg.Picture) -> Image.Image:
    for step in PLAIN_JPEG_STEPS:
        picture = step(picture)
    return picture.image


def _split(source: pyvips.Image, frame_height: int) -> list[pyvips.Image]:
    """The frames, each a still: without the source's page-height, which no step updates."""
    frames = []
    for top in range(0, source.height, frame_height):
        frame = source.crop(0, top, source.width, frame_height).copy()
        frame.remove("page-height")
        frames.append(frame)
    return frames


def _animation(source: pyvips.Image, frames: list[pyvips.Image]) -> pyvips.Image:
    """The frames one under the other, as libvips' savers take an animation, with the source's
    frame delays and loop count."""
    strip = pyvips.Image.arrayjoin(frames, across=1).copy()
    strip.set_type(pyvips.GValue.gint_type, "page-height", frames[0].height)
    for field in ("delay", "loop"):
        if source.get_typeof(field):
            strip.set_type(source.get_typeof(field), field, source.get(field))
    return strip


def _frames(image: pyvips.Image) -> int:
    return image.height // int(image.get("page-height")) if image.get_typeof("page-height") else 1


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
