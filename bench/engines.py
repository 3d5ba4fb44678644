"""The Python engines the benchmark times, each a function from encoded bytes to encoded bytes.

Every engine makes the same thumbnail: 100x100, ``cover`` (scale to fill, centre-crop), JPEG at
quality 85 with optimised Huffman tables, 4:2:0 chroma, no metadata. sharp, the fourth engine,
lives in ``bench/sharp.mjs``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyvips
from PIL import Image, ImageOps

from imgflow.core.outputs import Fit, OutputFormat, ThumbnailSpec
from imgflow.core.probe import probe_buffer
from imgflow.worker import plain_jpeg
from imgflow.worker.pipeline import libvips_thumbnails, make_thumbnail, plain_jpeg_pictures
from imgflow.worker.steps.load import load_options as worker_load_options
from imgflow.worker.steps.load import turbo_decode, turbo_decodes

BOX = 100
QUALITY = 85
MAX_PIXELS = 50_000_000  # the worker's default limits
MAX_SIDE = 16_384
SPEC = ThumbnailSpec(width=BOX, height=BOX, fit=Fit.cover, format=OutputFormat.jpeg)


@dataclass(frozen=True)
class Source:
    """An encoded image, and the load options imgflow's shrink-on-load picks for it (worked out
    once, so the decode floor times the decode alone)."""

    data: bytes
    load: dict[str, Any]

    @classmethod
    def of(cls, data: bytes) -> Source:
        return cls(data, load_options(data))


Engine = Callable[[Source], bytes]


def imgflow(source: Source, *, lossless: bool = False) -> bytes:
    """The worker's own thumbnail step, exactly as a job runs it (probe, shrink-on-load, lane, steps).
    ``lossless``: the same pixels as PNG, from the lane the JPEG took."""
    if not lossless:
        return make_thumbnail(
            source.data, SPEC, max_pixels=MAX_PIXELS, max_side=MAX_SIDE, quality=QUALITY
        ).data
    info = probe_buffer(source.data, max_pixels=MAX_PIXELS, max_side=MAX_SIDE)
    if plain_jpeg.takes(info, [SPEC]) and (plain := plain_jpeg_pictures(source.data, info, [SPEC])):
        out = io.BytesIO()
        [picture] = plain
        picture.save(out, "PNG")
        return out.getvalue()
    return imgflow_before(source, lossless=True)


def imgflow_before(source: Source, *, lossless: bool = False) -> bytes:
    """imgflow as it was before the plain JPEG lane (2026-12-02): every job through libvips'
    steps (JPEG decoded as the worker decodes it). Kept so that each run measures the change
    against the same peers."""
    spec = SPEC.model_copy(update={"format": OutputFormat.png}) if lossless else SPEC
    info = probe_buffer(source.data, max_pixels=MAX_PIXELS, max_side=MAX_SIDE)
    return libvips_thumbnails(source.data, info, [spec], quality=QUALITY)[0].data


def vips_thumbnail(source: Source, *, lossless: bool = False) -> bytes:
    """libvips' own all-in-one ``thumbnail_buffer``, saved with the same JPEG options as imgflow."""
    image = pyvips.Image.thumbnail_buffer(source.data, BOX, height=BOX, crop="centre")
    if lossless:
        return bytes(image.pngsave_buffer())
    return bytes(image.jpegsave_buffer(Q=QUALITY, optimize_coding=True, keep="none"))


def pillow(source: Source, *, lossless: bool = False) -> bytes:
    """Pillow: JPEG DCT scaling with ``draft`` to no less than twice the box (the same rule as
    imgflow's shrink-on-load), then ``ImageOps.fit``, which crops the centre and resizes it in one
    LANCZOS (lanczos3) pass."""
    with Image.open(io.BytesIO(source.data)) as opened:
        opened.draft("RGB", (2 * BOX, 2 * BOX))  # a no-op for PNG and WebP
        image = opened if opened.mode == "RGB" else opened.convert("RGB")
        thumb = ImageOps.fit(image, (BOX, BOX), method=Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if lossless:
        thumb.save(out, "PNG")
    else:
        thumb.save(out, "JPEG", quality=QUALITY, optimize=True)  # 4:2:0 chroma below quality 90
    return out.getvalue()


def load_options(data: bytes) -> dict[str, Any]:
    """The shrink-on-load imgflow's ``open_source`` would use for ``data``."""
    info = probe_buffer(data, max_pixels=MAX_PIXELS, max_side=MAX_SIDE)
    return worker_load_options(info, [SPEC])


def _drain(image: pyvips.Image) -> None:
    """Make libvips decode every pixel, for as little else as possible: the average of one band
    (an average of all three costs 7 ms more on a 1080p PNG than the PNG takes to thumbnail)."""
    image.extract_band(0).avg()


def decode_shrunk(source: Source) -> bytes:
    """Floor: decode with imgflow's shrink-on-load, nothing else."""
    _drain(pyvips.Image.new_from_buffer(source.data, "", **source.load))
    return b""


def decode_full(source: Source) -> bytes:
    """Floor without shrink-on-load: a full-size decode."""
    _drain(pyvips.Image.new_from_buffer(source.data, "", access="sequential"))
    return b""


def worker_decode(source: Source) -> bytes:
    """Floor for imgflow: decode as the worker does, nothing else (TurboJPEG for JPEG, libvips
    for the rest), at imgflow's shrink-on-load."""
    info = probe_buffer(source.data, max_pixels=MAX_PIXELS, max_side=MAX_SIDE)
    if turbo_decodes(info, source.load) and turbo_decode(source.data, info, source.load) is not None:
        return b""
    return decode_shrunk(source)


def pillow_decode(source: Source) -> bytes:
    """Floor for Pillow: open and decode with the same ``draft`` as ``pillow``, nothing else."""
    with Image.open(io.BytesIO(source.data)) as opened:
        opened.draft("RGB", (2 * BOX, 2 * BOX))
        opened.load()
    return b""


ENGINES: dict[str, Engine] = {
    "imgflow": imgflow,
    "imgflow_before": imgflow_before,
    "vips_thumbnail": vips_thumbnail,
    "pillow": pillow,
    "decode_shrunk": decode_shrunk,
    "decode_full": decode_full,
    "pillow_decode": pillow_decode,
    "worker_decode": worker_decode,
}
# the engines that make thumbnails, with ``lossless=True`` giving the same pixels as PNG (for quality)
THUMBNAILERS = {
    "imgflow": imgflow,
    "imgflow_before": imgflow_before,
    "vips_thumbnail": vips_thumbnail,
    "pillow": pillow,
}
