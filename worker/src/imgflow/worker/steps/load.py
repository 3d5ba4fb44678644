"""Open the source, decoding no more pixels than the thumbnail needs (shrink-on-load).

JPEG can decode at 1/2, 1/4 or 1/8 scale, WebP at any scale, for a fraction of the cost of a full
decode. We take the largest shrink that leaves the image no smaller than the box, as sharp and
Pillow do: on our benchmark corpus it is faster than keeping a 2x margin for the final resize, for
a PSNR change under 0.1 dB (bench/studies/README.md, Candidate changes to the thumbnail step).

AVIF has no shrink-on-load: libheif decodes the whole picture in one call, whatever size libvips
asks for, and the memory estimate counts it whole (memory.py). heifload's ``thumbnail`` option is
not used: it returns the preview image the file embeds, if any, which may be smaller than the box
or show something other than the picture. It is opened sequential like the rest, so that libvips
keeps no cache of its own beside libheif's. libheif applies the file's rotation and mirroring
(irot, imir) itself, and libvips then reports no orientation: nothing is turned twice.

JPEG is decoded by libjpeg-turbo through its TurboJPEG API (the ``simplejpeg`` wheel, with the
same DCT scaling) when the shrunk picture is small, and libvips takes the pixels from there:
libvips' own JPEG decode (mozjpeg 5.0 in pyvips-binary) cost more than libjpeg-turbo's through
Pillow, the larger part of what kept imgflow below Pillow on JPEG (bench/README.md, JPEG decoded by
Pillow), and TurboJPEG decodes the same pixels as Pillow's ``draft`` with less CPU (bench/README.md,
JPEG decoded through TurboJPEG). TurboJPEG only ever sees bytes libvips' probe already identified
as JPEG and bounded by its header, and decodes only when its own header read agrees with the
probe's; whatever it cannot do (CMYK, a size other than the probe's, a damaged or cut-off file)
goes to libvips as before, so the errors a client reads are libvips' and a truncated file still
fails.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import pyvips
import simplejpeg

from imgflow.core.outputs import SMART, Fit, ThumbnailSpec
from imgflow.core.probe import ImageInfo, open_buffer
from imgflow.worker.steps.geometry import stored_box

JPEG_SHRINKS = (8, 4, 2)
# TurboJPEG decodes a JPEG whole (no sequential streaming like libvips'), so only when the shrunk
# picture is at most this many pixels: the default 100x100 job decodes any source up to 50 MP to
# under 1 MP, while a large output from a large source keeps libvips' streaming decode.
TURBO_MAX_DECODED = 4_000_000
# what a TurboJPEG decode holds at its peak: its packed RGB pixels (3 bytes a pixel, handed to
# libvips without a copy) and, in the plain JPEG lane, Pillow's RGBX copy of them (4); memory.py
# counts it
TURBO_BYTES_PER_PIXEL = 7
# TurboJPEG's JPEG colour spaces that decode to libvips' images as they are, and the pixel format
# to ask for; CMYK and YCCK go to libvips
_TURBO_SPACES = {"YCbCr": "RGB", "RGB": "RGB", "Gray": "GRAY"}
_INTERPRETATIONS = {3: "srgb", 1: "b-w"}


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
    factor = min(source_reduction(info, spec) for spec in specs)
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


def source_reduction(info: ImageInfo, spec: ThumbnailSpec) -> float:
    """How many times smaller than the source this output is (below 1: it enlarges)."""
    return reduction(info.width, info.height, stored_box(spec, info.orientation), spec.fit)


def decoded_size(info: ImageInfo, options: dict[str, Any]) -> tuple[int, int]:
    """Width and height of the source as the load options decode it."""
    if "shrink" in options:
        shrink = int(options["shrink"])
        return math.ceil(info.width / shrink), math.ceil(info.height / shrink)
    scale = float(options.get("scale", 1.0))
    return math.ceil(info.width * scale), math.ceil(info.height * scale)


def turbo_decodes(info: ImageInfo, options: dict[str, Any]) -> bool:
    """Whether ``open_source`` hands this source to TurboJPEG (if its colour space allows)."""
    width, height = decoded_size(info, options)
    return info.format == "jpeg" and info.pages == 1 and width * height <= TURBO_MAX_DECODED


def animates(info: ImageInfo, specs: Sequence[ThumbnailSpec]) -> bool:
    """Whether any of the outputs is an animation of this source."""
    return any(spec.animates(info.format, info.pages) for spec in specs)


def open_source(
    data: bytes, info: ImageInfo, specs: Sequence[ThumbnailSpec], *, turbo: bool = True
) -> pyvips.Image:
    """The source, ready for the first step. For several outputs, or the frames of an animation,
    it is decoded into memory once here, and every output (or frame) is derived from those pixels.
    ``turbo=False``: TurboJPEG has already refused these bytes; libvips decodes them."""
    options = load_options(info, specs)
    if turbo and turbo_decodes(info, options) and (image := _turbo_jpeg(data, info, options)) is not None:
        return image  # already in memory: every access pattern and any number of outputs
    image = open_buffer(data, **options)
    return image.copy_memory() if len(specs) > 1 or animates(info, specs) else image


def turbo_decode(
    data: bytes, info: ImageInfo, options: dict[str, Any], *, rgb: bool = False
) -> npt.NDArray[np.uint8] | None:
    """The JPEG decoded by TurboJPEG at the load's shrink: rows x columns x bands, 3 bands or 1 for
    grey (3 for grey too with ``rgb``); None when TurboJPEG does not see the picture the probe
    saw, or fails: libvips decodes it then, or says why not."""
    width, height = decoded_size(info, options)
    try:
        rows, columns, space, _ = simplejpeg.decode_jpeg_header(data)
        if (columns, rows) != (info.width, info.height) or space not in _TURBO_SPACES:
            return None
        pixels: npt.NDArray[np.uint8] = simplejpeg.decode_jpeg(
            data,
            "RGB" if rgb else _TURBO_SPACES[space],
            # the largest DCT scale that leaves at least this size, and no larger than the shrink:
            # exactly 1/shrink (TurboJPEG also has scales like 3/8 that libvips' shrink has not)
            min_width=width,
            min_height=height,
            min_factor=int(options.get("shrink", 1)),
        )
    except Exception:  # damaged, cut off (strict: a warning is an error), or beyond TurboJPEG
        return None
    return pixels if pixels.shape[:2] == (height, width) else None


def _turbo_jpeg(data: bytes, info: ImageInfo, options: dict[str, Any]) -> pyvips.Image | None:
    """The JPEG decoded by TurboJPEG, as a libvips image with what the steps read from a libvips
    load (orientation, ICC profile); None leaves the decode to libvips."""
    pixels = turbo_decode(data, info, options)
    if pixels is None:
        return None
    height, width, bands = pixels.shape
    # libvips reads the array in place and keeps a reference to it
    image = pyvips.Image.new_from_memory(pixels, width, height, bands, "uchar").copy(
        interpretation=_INTERPRETATIONS[bands]
    )
    if info.profile:  # from libvips' own header read: no pixels are decoded for it
        icc = open_buffer(data).get("icc-profile-data")
        image.set_type(pyvips.GValue.blob_type, "icc-profile-data", icc)
    if info.orientation not in (0, 1):  # steps/rotate.py's autorot reads it from the image
        image.set_type(pyvips.GValue.gint_type, "orientation", info.orientation)
    return image
