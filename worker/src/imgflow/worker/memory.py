"""How much memory a job will need, known from the header before anything is decoded, and the
worker-wide budget jobs draw it from.

libvips streams most sources a band of rows at a time, so a job's memory follows the width of what
is decoded, not its area — except where the format makes the decoder hold the whole image: an
interlaced PNG (Adam7), a progressive JPEG (its coefficients), a GIF frame (RGBA canvas), a TIFF (a
strip may span the whole image) and an AVIF (libheif decodes the whole picture at once). The
figures below are fitted to bench/studies/memory.py's measurements on the worst shapes the limits
let through (bench/studies/README.md, Worker memory), with margin: the estimate is meant to be
above what a job takes, so that jobs whose estimates fit the budget together fit the pod.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio

from imgflow.core import watermarks
from imgflow.core.outputs import Fit, OutputFormat, ThumbnailSpec, outside_size
from imgflow.core.probe import ImageInfo
from imgflow.worker import plain_jpeg
from imgflow.worker.steps.load import (
    TURBO_BYTES_PER_PIXEL,
    animates,
    decoded_size,
    load_options,
    turbo_decodes,
)

MB = 1 << 20
# the pipeline's own buffers, whatever the source: libvips' thread buffers, the encoder
FIXED = 24 * MB
# rows of the decoded source that libvips' sequential read, block shrink and lanczos3 hold at
# once across its threads, with margin (bench/studies/README.md, Worker memory)
STREAMED_ROWS = 3_000
# the same when the decoder holds the whole image already (no sequential read cache, but the
# decoder's own row buffers, an interlaced PNG's the most)
ROWS_BESIDE_WHOLE = 1_000
# a decoder holding the whole image keeps some more (libpng's interlace passes)
WHOLE_MARGIN = 1.1
# a progressive JPEG's coefficients: 2 bytes per sample of every component, at full size
COEFFICIENT_BYTES = 2
# a GIF frame is rendered to 8-bit RGBA by the decoder and copied once more by libvips
GIF_FRAME_BYTES = 9
# AVIF: libheif decodes the whole image before libvips reads a row (no shrink-on-load), and holds
# the AV1 decoder's planes, its own YCbCr copy and the RGB(A) it converts to at once: decoder
# state whatever the size, then some bytes per pixel beside the RGB(A) output (bench/studies/README.md,
# AVIF decoding: memory). The chroma subsampling is not in the header libvips reads, so 4:4:4 (the
# worst) is assumed.
HEIF_DECODER = 128 * MB
HEIF_PLANE_BYTES = 16


# AVIF encoding (libheif + aom, effort 4) holds a fixed part and some bytes per output pixel, above
# what noise, its worst case, took (bench/studies/README.md, AVIF encoding: time and memory)
AVIF_FIXED = 64 * MB
AVIF_BYTES_PER_PIXEL = 24
# an output held whole (for the EXIF rotation): 8-bit RGBA at most
OUTPUT_BANDS = 4
# What the other encoders hold for the whole output, bytes per output pixel, above what noise
# (their worst case) took: JPEG with optimised Huffman tables buffers every DCT coefficient (more at
# 4:4:4, quality 90 and up, with the compressed result), WebP and GIF hold the picture, PNG streams
# (bench/studies/README.md, Large outputs).
JPEG_BYTES_PER_PIXEL = 4
JPEG_444_BYTES_PER_PIXEL = 11
WEBP_BYTES_PER_PIXEL = 22
GIF_BYTES_PER_PIXEL = 13
# an animation's frames decoded at once: RGBA, and the decoder's own canvas beside them
ANIMATION_BYTES = 2 * 4


class OverBudget(Exception):
    """The job needs more memory than the worker may give any one job."""


def job_memory_bytes(
    info: ImageInfo, specs: Sequence[ThumbnailSpec], source_bytes: int, *, quality: int
) -> int:
    """Peak memory of the pipeline for this source and these outputs, estimated from the header;
    ``quality``: the service's default JPEG and WebP quality (a spec's own wins)."""
    options = load_options(info, specs)
    width, height = decoded_size(info, options)
    row = width * info.bands * info.sample_bytes
    decoded = width * height * info.bands * info.sample_bytes
    whole = 0
    if info.format == "gif":
        whole = info.pixels * GIF_FRAME_BYTES
    elif info.format == "avif":
        whole = HEIF_DECODER + info.pixels * (HEIF_PLANE_BYTES + info.bands * info.sample_bytes)
    elif info.format == "jpeg" and info.interlaced:
        whole = info.pixels * info.bands * COEFFICIENT_BYTES  # shrink-on-load does not shrink these
    elif info.interlaced or info.format == "tiff" or options["access"] == "random":
        whole, decoded = decoded, 0  # the decoder or smartcrop holds it all (counted here)
    if turbo_decodes(info, options):  # held whole at the shrunk size (steps/load.py)
        whole += width * height * TURBO_BYTES_PER_PIXEL
    if len(specs) > 1:  # several outputs are made from one decode held in memory
        whole += decoded
    if animates(info, specs):  # every frame decoded at once (RGBA), and the output's frames
        whole = max(whole, info.pixels * info.pages * ANIMATION_BYTES)
    rows = ROWS_BESIDE_WHOLE if whole else STREAMED_ROWS
    # outputs are made one after the other: the largest counts
    lane = plain_jpeg.takes(info, specs)
    outputs = max(
        _output_bytes(info, spec, spec.quality or quality, height if lane else None) for spec in specs
    )
    # each watermark decoded (RGBA) and a scaled copy
    marks = len({spec.watermark for spec in specs if spec.watermark}) * 2 * watermarks.MAX_SIDE**2 * 4
    return int(FIXED + source_bytes + whole * WHOLE_MARGIN + row * rows + outputs + marks)


def _output_bytes(info: ImageInfo, spec: ThumbnailSpec, quality: int, lane_source_height: int | None) -> int:
    """What one output holds beyond the rows streaming through: the output image when it is
    rotated in memory, the encoder's buffers, and in the plain JPEG lane Pillow's pictures
    (``lane_source_height``: the decoded height there)."""
    box = (spec.width, spec.height)
    out_w, out_h = outside_size(*info.displayed, box) if spec.fit is Fit.outside else box
    pixels = out_w * out_h
    frames = info.pages if spec.animates(info.format, info.pages) else 1
    held = pixels * OUTPUT_BANDS if info.orientation not in (0, 1) else 0
    if frames > 1:  # the output's frames, joined for the encoder
        held += pixels * OUTPUT_BANDS * frames * 2
    if spec.format is OutputFormat.avif:  # libheif takes the whole output image, and AV1 more
        held += AVIF_FIXED + pixels * AVIF_BYTES_PER_PIXEL
    elif spec.format is OutputFormat.jpeg:
        held += pixels * (JPEG_BYTES_PER_PIXEL if quality < 90 else JPEG_444_BYTES_PER_PIXEL)
    elif spec.format is OutputFormat.webp:
        held += pixels * WEBP_BYTES_PER_PIXEL
    elif spec.format is OutputFormat.gif:
        held += pixels * GIF_BYTES_PER_PIXEL * frames
    if lane_source_height is not None:
        held += plain_jpeg.held_bytes(out_w, out_h, lane_source_height)
    else:  # libvips' lane holds the output whole, for the encoder and the placeholder (pipeline.py)
        held += pixels * OUTPUT_BANDS * frames
    return held


class MemoryBudget:
    """Jobs hold their estimate while they run; one that would overdraw the budget waits.

    A job alone may always run if its estimate is within the budget, so a big job is never starved
    by a stream of small ones for long: waiters are served in arrival order.
    """

    def __init__(self, total_bytes: int) -> None:
        self.total = total_bytes
        self.held = 0
        self._turns: list[anyio.Event] = []
        self._changed: anyio.Event | None = None  # set whenever ``held`` or the queue changes

    @asynccontextmanager
    async def hold(self, amount: int) -> AsyncIterator[None]:
        if amount > self.total:
            raise OverBudget(
                f"Processing this image needs about {_mb(amount)} MB, over the {_mb(self.total)} MB "
                "one job may use on this service (a very wide, interlaced or 16-bit image); "
                "a smaller or non-interlaced version will work."
            )
        turn = anyio.Event()
        self._turns.append(turn)
        try:
            while self._turns[0] is not turn or self.held + amount > self.total:
                await self._wait_for_change()
        except BaseException:
            self._turns.remove(turn)
            self._notify()
            raise
        self._turns.pop(0)
        self.held += amount
        self._notify()
        try:
            yield
        finally:
            self.held -= amount
            self._notify()

    async def _wait_for_change(self) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None


def _mb(amount: int) -> int:
    return math.ceil(amount / MB)
