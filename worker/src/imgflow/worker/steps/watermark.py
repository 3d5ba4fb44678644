"""Composite the tenant's watermark onto the output, at the compass point its position names,
``margin`` output pixels in from the edges, scaled to ``scale`` of the output's width (and never
beyond the output), at its opacity.

Runs on the finished picture (after the rotation, the filters and the padding) so that the mark
is upright, sharp and placed on what the client sees.
"""

from __future__ import annotations

import pyvips

from imgflow.core.outputs import COMPASS
from imgflow.worker.work import Work


def watermark(work: Work) -> Work:
    spec = work.spec
    if spec.watermark is None:
        return work
    image = work.image
    margin = spec.watermark_margin
    room_w, room_h = max(1, image.width - 2 * margin), max(1, image.height - 2 * margin)
    mark = work.watermarks[spec.watermark]
    scale = min(image.width * spec.watermark_scale / mark.width, room_w / mark.width, room_h / mark.height)
    mark = mark.resize(scale, kernel="lanczos3") if scale != 1 else mark
    if spec.watermark_opacity < 1:
        mark = mark[:3].bandjoin((mark[3] * spec.watermark_opacity).cast("uchar"))
    x, y = COMPASS[spec.watermark_position]  # 0, 0.5 or 1 across and down
    left = margin + round(x * (image.width - 2 * margin - mark.width))
    top = margin + round(y * (image.height - 2 * margin - mark.height))
    had_alpha = image.hasalpha()
    marked = _rgba(image).composite2(mark, "over", x=left, y=top).cast("uchar")
    return work.with_image(marked if had_alpha else marked[:3])


def _rgba(image: pyvips.Image) -> pyvips.Image:
    return image if image.hasalpha() else image.bandjoin_const([255])


def prepare(image: pyvips.Image) -> pyvips.Image:
    """A decoded watermark as the step takes it: 8-bit sRGB with alpha."""
    if image.interpretation != "srgb":
        image = image.colourspace("srgb")
    if image.format != "uchar":
        image = image.cast("uchar")
    return _rgba(image)
