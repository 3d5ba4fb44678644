"""The plain JPEG lane: a JPEG made into JPEGs with nothing but a crop and a resize, decoded by
TurboJPEG (as every small JPEG decode, steps/load.py) and done by Pillow from there to the encode.

Most jobs are this (the original contract's 100x100 ``cover`` JPEG). For them libvips' fixed cost
per image was the larger part of what kept imgflow below Pillow: on a 1080p JPEG decoded at 1/8
(240x135), building and running libvips' crop, lanczos3 resize and JPEG save took ~1.9 ms of CPU
where Pillow's resize and save take ~0.3 ms, beside a 5 ms decode (bench/README.md, 2026-12-02).
TurboJPEG's decode and Pillow's resize and encode also release the GIL, so two jobs in one worker
process run side by side, which pyvips' many small calls did not.

Same geometry as the libvips steps, from the same functions (``steps/crop.py``,
``steps/resize.py``), the same lanczos3 kernel with the same block-average gap, the same JPEG
encoder settings as ``steps/encode.py`` (libvips writes mozjpeg with its libjpeg-turbo-compatible
defaults: Annex K tables, 4:2:0 below quality 90, optimised Huffman tables), so a job's result
does not depend on its lane beyond the resampler's rounding (tests/test_plain_jpeg.py measures it).
Anything else goes to the libvips steps: another output format, a smart crop, a filter, a
watermark, an enlargement, an ICC profile (colour management is libvips'), CMYK, or anything
TurboJPEG cannot decode as the probe described it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image

from imgflow.core.jobs import SMART, Fit, OutputFormat, ThumbnailSpec, focal_point
from imgflow.core.probe import ImageInfo
from imgflow.worker.steps.crop import region, start, stored_point
from imgflow.worker.steps.load import load_options, source_reduction, turbo_decode, turbo_decodes
from imgflow.worker.steps.resize import LANCZOS_GAP, target_size
from imgflow.worker.work import TRANSPOSING

# EXIF orientation -> the transpose that makes the picture upright (as ImageOps.exif_transpose)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
WHITE = (255, 255, 255)  # contain's padding on JPEG, as steps/pad.py


def takes(info: ImageInfo, specs: Sequence[ThumbnailSpec]) -> bool:
    """Whether the job is plain enough for this lane, from the probe and the specs alone: decided
    before decoding, so that a job the lane turns away is not decoded twice."""
    # enlarging is left to libvips, whose upsampling is not a lanczos3 like Pillow's (23 dB apart);
    # colour management (an ICC profile) and CMYK (4 bands) are libvips' too
    return (
        turbo_decodes(info, load_options(info, specs))
        and not info.profile
        and info.bands in (1, 3)
        and all(_plain(spec) for spec in specs)
        and all(source_reduction(info, spec) >= 1 for spec in specs)
    )


def held_bytes(width: int, height: int, source_height: int) -> int:
    """What the lane holds for one ``width`` x ``height`` output beyond its decode (counted by
    memory.py with the decode): the resize's horizontal pass, the picture and its turned or padded
    copy, Pillow keeping RGB in 4 bytes a pixel."""
    return (max(width, height) * source_height + 2 * width * height) * 4


def _plain(spec: ThumbnailSpec) -> bool:
    return (
        spec.format is OutputFormat.jpeg
        and not (spec.fit is Fit.cover and spec.gravity in SMART)
        and spec.blur is None
        and spec.sharpen is None
        and spec.pixelate is None
        and not spec.grayscale
        and spec.watermark is None
    )


def make(
    data: bytes, info: ImageInfo, specs: Sequence[ThumbnailSpec], quality: int
) -> list[tuple[bytes, int, int]] | None:
    """Each spec's JPEG and its size, in order; None when the libvips steps must take the job.
    One output's picture at a time, as memory.py counts them."""
    source = _source(data, info, specs)
    if source is None:
        return None
    return [encode(_fitted(source, spec, info.orientation), spec.quality or quality) for spec in specs]


def pictures(data: bytes, info: ImageInfo, specs: Sequence[ThumbnailSpec]) -> list[Image.Image] | None:
    """Each spec's picture before encoding (bench/engines.py scores them), or None."""
    source = _source(data, info, specs)
    return None if source is None else [_fitted(source, spec, info.orientation) for spec in specs]


def _source(data: bytes, info: ImageInfo, specs: Sequence[ThumbnailSpec]) -> Image.Image | None:
    """The decoded source, RGB (grey decoded to RGB: the libvips steps make every output sRGB);
    None when TurboJPEG does not decode the picture the probe saw."""
    pixels = turbo_decode(data, info, load_options(info, specs), rgb=True)
    if pixels is None:
        return None
    height, width, _ = pixels.shape
    return Image.frombuffer("RGB", (width, height), pixels, "raw", "RGB", 0, 1)


def _fitted(source: Image.Image, spec: ThumbnailSpec, orientation: int) -> Image.Image:
    """Crop (cover), resize, turn upright, pad (contain): steps/crop, resize, rotate and pad."""
    box = (spec.height, spec.width) if orientation in TRANSPOSING else (spec.width, spec.height)
    width, height = source.size
    area = (0, 0, width, height)
    if spec.fit is Fit.cover:
        keep_w, keep_h = region(source.size, box)
        x, y = stored_point(*focal_point(spec.gravity), orientation)
        left, top = start(width, keep_w, x), start(height, keep_h, y)
        area, width, height = (left, top, left + keep_w, top + keep_h), keep_w, keep_h
    size = target_size(width, height, box, spec.fit)
    image = source.resize(size, Image.Resampling.LANCZOS, box=area, reducing_gap=LANCZOS_GAP)
    if orientation in _UPRIGHT:
        image = image.transpose(_UPRIGHT[orientation])
    if spec.fit is Fit.contain and image.size != (spec.width, spec.height):
        canvas = Image.new("RGB", (spec.width, spec.height), WHITE)
        canvas.paste(image, ((spec.width - image.width) // 2, (spec.height - image.height) // 2))
        image = canvas
    return image


def encode(image: Image.Image, quality: int) -> tuple[bytes, int, int]:
    out = io.BytesIO()
    # libvips' jpegsave: chroma subsampled below quality 90, not from 90 up
    image.save(out, "JPEG", quality=quality, optimize=True, subsampling="4:2:0" if quality < 90 else "4:4:4")
    return out.getvalue(), image.width, image.height
