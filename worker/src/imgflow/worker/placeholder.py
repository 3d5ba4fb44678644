"""An output's placeholder (imgflow.core.facts.Placeholder), made from its pixels in memory just
before they are encoded: nothing is decoded again.

The picture is first boxed down to at most ``SIDE`` pixels a side: a ThumbHash renders at 32
pixels and keeps at most 7x7 DCT terms, a BlurHash 4x3, and a palette of five colours needs no
more pixels than that, so a larger copy would cost more and say nothing more.
"""

from __future__ import annotations

import base64

import numpy as np
import pyvips
from PIL import Image

from imgflow.core.facts import PALETTE_SIZE, Placeholder
from imgflow.worker import blurhash, thumbhash

SIDE = 32
SAMPLED = 4  # a large output is point-sampled to SAMPLED x SIDE before the boxes
OPAQUE = 128  # pixels at least this opaque count in the palette
BIN_BITS = 5  # the palette's bins: 8 - 5 = 3 bits a channel
_BINS = 1 << 3 * (8 - BIN_BITS)
_BIN_WEIGHTS = np.array([1 << 2 * (8 - BIN_BITS), 1 << (8 - BIN_BITS), 1], np.intp)  # a bin's code


def of_vips(image: pyvips.Image, *, with_blurhash: bool) -> Placeholder:
    """Of an output held in memory (``copy_memory``), 8-bit sRGB with or without alpha; of an
    animation, its first frame."""
    if image.get_typeof("page-height"):
        image = image.crop(0, 0, image.width, int(image.get("page-height")))
    if image.bands < 3:
        image = image.colourspace("srgb")
    # every pyvips call costs tens of microseconds (a shrink in libvips took longer than numpy's
    # boxes): a large output is point-sampled to SAMPLED x SIDE in libvips, the rest is numpy's
    if (steps := _steps(image.width, image.height)) is not None:
        image = image.subsample(*steps)
    pixels = np.ndarray(
        buffer=image.write_to_memory(), dtype=np.uint8, shape=(image.height, image.width, image.bands)
    )
    return of_pixels(_boxed(pixels), with_blurhash=with_blurhash)


def of_pillow(image: Image.Image, *, with_blurhash: bool) -> Placeholder:
    """Of the plain JPEG lane's RGB picture: a large one point-sampled as ``of_vips`` samples
    (the box filter alone read every pixel of a 1600x1200 output: milliseconds)."""
    if (steps := _steps(*image.size)) is not None:
        sx, sy = steps
        # Pillow's nearest neighbour takes the pixel under each sample's centre: moved back to
        # its top left corner, the one libvips' subsample takes
        corner = (sx, 0, (1 - sx) / 2, 0, sy, (1 - sy) / 2)
        size = (image.width // sx, image.height // sy)
        image = image.transform(size, Image.Transform.AFFINE, corner, Image.Resampling.NEAREST)
    if (f := _factor(*image.size)) > 1:
        image = image.reduce(f)  # Pillow's box filter
    return of_pixels(np.asarray(image), with_blurhash=with_blurhash)


def _steps(width: int, height: int) -> tuple[int, int] | None:
    """The steps across and down that point-sample a large picture to about SAMPLED x SIDE pixels
    a side (no further than a pixel on the short side: a 4096x1 output); None for a small one."""
    step = max(width, height) // (SAMPLED * SIDE)
    return (min(step, width), min(step, height)) if step > 1 else None


def _factor(width: int, height: int) -> int:
    """The whole factor that brings the picture within SIDE pixels a side."""
    return -(-max(width, height) // SIDE)


def _boxed(pixels: thumbhash.Pixels) -> thumbhash.Pixels:
    """At most SIDE pixels a side, each the mean of the box it covers (the edges' partial boxes
    left out)."""
    height, width = pixels.shape[:2]
    if (f := _factor(width, height)) == 1:
        return pixels
    h, w = max(1, height // f), max(1, width // f)
    fy, fx = min(f, height), min(f, width)
    # rows then columns, each a reduction along one axis: numpy's mean over two strided axes at
    # once took ten times as long
    rows = pixels[: h * fy].reshape(h, fy, -1).sum(axis=1, dtype=np.float32)
    rows = rows.reshape(h, width, -1)[:, : w * fx]
    boxes = np.add.reduceat(rows, np.arange(0, w * fx, fx), axis=1)
    means: thumbhash.Pixels = (boxes / (fy * fx)).round().astype(np.uint8)
    return means


def of_pixels(rgba: thumbhash.Pixels, *, with_blurhash: bool) -> Placeholder:
    """``rgba``: height x width x 4 (or 3: opaque), at most 100 a side."""
    colours = palette(rgba)
    return Placeholder(
        thumbhash=base64.b64encode(thumbhash.encode(rgba)).decode(),
        blurhash=blurhash.encode(rgba) if with_blurhash else None,
        dominant_color=colours[0],
        palette=colours,
    )


def palette(rgba: thumbhash.Pixels) -> list[str]:
    """Up to ``PALETTE_SIZE`` colours of the picture's opaque pixels (of all, when none is), most
    common first: the pixels counted in bins of 32 levels a channel (512 bins), each bin's colour
    the mean of its pixels. A few numpy calls: a median cut's many small steps took longer than
    the ThumbHash on these few pixels, and each call costs more here, just after a decode, than
    its arithmetic."""
    opaque = rgba[rgba[..., 3] >= OPAQUE][:, :3] if rgba.shape[2] == 4 else rgba.reshape(-1, 3)
    if not len(opaque):
        opaque = rgba[..., :3].reshape(-1, 3)
    codes = (opaque >> BIN_BITS) @ _BIN_WEIGHTS
    counts = np.bincount(codes, minlength=_BINS)
    top = np.argsort(counts, kind="stable")[: -PALETTE_SIZE - 1 : -1]
    sums = np.equal.outer(top, codes) @ opaque.astype(np.float64)  # the top bins' channel sums
    return [
        _hex(*(round(c / n) for c in colour))
        for colour, n in zip(sums.tolist(), counts[top].tolist(), strict=True)
        if n
    ]


def _hex(r: int, g: int, b: int) -> str:
    return f"#{r:02x}{g:02x}{b:02x}"
