"""Scale the image to the size its fit calls for.

Two stages, as libvips' own ``resize`` does them, but with the cheap one first and in the
source's own sample format: an integer block average (``shrinkv``/``shrinkh``) down to no less
than twice the target, then one lanczos3 pass for the rest. Letting ``resize`` do both after
``premultiply`` (which makes every sample a 4-byte float) held about twice as much memory on wide
16-bit sources as this order does (bench/studies/README.md, Worker memory).
"""

from __future__ import annotations

import pyvips

from imgflow.worker.steps.geometry import target_size
from imgflow.worker.work import Work

# keep at least this much reduction for lanczos3, as libvips' resize does (its ``gap``)
LANCZOS_GAP = 2.0


def block_shrink(size: int, target: int) -> int:
    """The integer factor to average blocks by, leaving lanczos3 at least ``LANCZOS_GAP``."""
    return max(1, int(size / target / LANCZOS_GAP))


def resize(work: Work) -> Work:
    image = work.image
    new_w, new_h = target_size(image.width, image.height, work.box, work.spec.fit)
    if (new_w, new_h) == (image.width, image.height):
        return work
    band_format = image.format
    alpha = image.hasalpha()
    # Premultiplied alpha keeps transparent pixels' colour from bleeding into the edges; cast back
    # to the source's format so the block average runs on 1- or 2-byte samples, not floats.
    if alpha:
        image = image.premultiply().cast(band_format)
    h_shrink, v_shrink = block_shrink(image.width, new_w), block_shrink(image.height, new_h)
    if v_shrink > 1:
        image = image.shrinkv(v_shrink)
    if h_shrink > 1:
        image = image.shrinkh(h_shrink)
    image = image.resize(new_w / image.width, vscale=new_h / image.height, kernel="lanczos3")
    if alpha:
        image = image.unpremultiply().cast(band_format)
    return work.with_image(_exact(image, new_w, new_h))


def _exact(image: pyvips.Image, width: int, height: int) -> pyvips.Image:
    """``resize`` can round one pixel off the asked size; crop or extend the edge to the box."""
    if (image.width, image.height) == (width, height):
        return image
    return image.gravity("north-west", width, height, extend="copy")
