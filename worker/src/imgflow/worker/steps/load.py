"""Open the source, decoding no more pixels than the thumbnail needs (shrink-on-load).

JPEG can decode at 1/2, 1/4 or 1/8 scale, WebP at any scale, for a fraction of the cost of a full
decode. We take the largest shrink that leaves the image no smaller than the box, as sharp and
Pillow do: measured on our benchmark corpus (bench/README.md) it is 18% faster on 1080p JPEG than
keeping a 2x margin for the final resize, for a PSNR change under 0.1 dB.

AVIF has no shrink-on-load: libheif decodes the whole picture in one call, whatever size libvips
asks for, and the memory estimate counts it whole (memory.py). heifload's ``thumbnail`` option is
not used: it returns the preview image the file embeds, if any, which may be smaller than the box
or show something other than the picture. It is opened sequential like the rest, so that libvips
keeps no cache of its own beside libheif's. libheif applies the file's rotation and mirroring
(irot, imir) itself, and libvips then reports no orientation: nothing is turned twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyvips

from imgflow.core.jobs import SMART, Fit, ThumbnailSpec
from imgflow.core.probe import ImageInfo, open_buffer
from imgflow.worker.work import TRANSPOSING

JPEG_SHRINKS = (8, 4, 2)


def reduction(width: int, height: int, box: tuple[int, int], fit: Fit) -> float:
    """How many times smaller than the source the result is, on the axis that must keep detail."""
    box_w, box_h = box
    # cover, outside and fill keep detail on the less-reduced axis; contain and inside on the more
    if fit in (Fit.cover, Fit.outside, Fit.fill):
        return min(width / box_w, height / box_h)
    return max(width / box_w, height / box_h)


def jpeg_shrink(factor: float) -> int:
    """The largest JPEG load shrink that does not reduce more than ``factor``."""
    return next((shrink for shrink in JPEG_SHRINKS if factor >= shrink), 1)


def load_options(info: ImageInfo, specs: Sequence[ThumbnailSpec]) -> dict[str, Any]:
    """How to open the source for these outputs: shrunk on load no more than the largest needs."""
    factor = min(_reduction(info, spec) for spec in specs)
    # fail_on="truncated": a cut-off file fails the job with a clear error instead of producing
    # a thumbnail with a grey band where the data stopped.
    # smartcrop reads the image more than once: it needs random access (and the whole image
    # held). Several outputs are made from one copy in memory (``open_source``), which a
    # sequential read fills.
    smart = len(specs) == 1 and specs[0].fit is Fit.cover and specs[0].gravity in SMART
    options: dict[str, Any] = {"access": "random" if smart else "sequential", "fail_on": "truncated"}
    if animates(info, specs):  # every frame, one under the other ("page-height" high each)
        options.update(n=-1, access="random")
    if info.format == "jpeg" and jpeg_shrink(factor) > 1:
        options["shrink"] = jpeg_shrink(factor)
    elif info.format == "webp" and factor > 1:
        options["scale"] = 1 / factor  # WebP decodes straight to the box size
    return options


def _reduction(info: ImageInfo, spec: ThumbnailSpec) -> float:
    box = (spec.height, spec.width) if info.orientation in TRANSPOSING else (spec.width, spec.height)
    return reduction(info.width, info.height, box, spec.fit)


def animates(info: ImageInfo, specs: Sequence[ThumbnailSpec]) -> bool:
    """Whether any of the outputs is an animation of this source."""
    return any(spec.animates(info.format, info.pages) for spec in specs)


def open_source(data: bytes, info: ImageInfo, specs: Sequence[ThumbnailSpec]) -> pyvips.Image:
    """The source, ready for the first step. For several outputs, or the frames of an animation,
    it is decoded into memory once here, and every output (or frame) is derived from those pixels."""
    image = open_buffer(data, **load_options(info, specs))
    return image.copy_memory() if len(specs) > 1 or animates(info, specs) else image
