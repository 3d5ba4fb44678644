"""``contain``: centre the image on a canvas of exactly the box's size.

The padding is transparent where the output format has alpha, white for JPEG.
"""

from __future__ import annotations

from imgflow.core.outputs import Fit, OutputFormat
from imgflow.worker.work import Work


def pad(work: Work) -> Work:
    if work.spec.fit is not Fit.contain:
        return work
    box_w, box_h = work.box
    image = work.image
    if (image.width, image.height) == (box_w, box_h):
        return work
    if work.spec.format is OutputFormat.jpeg:
        background = [255] * image.bands
    else:
        if not image.hasalpha():
            image = image.bandjoin_const([255])
        background = [0] * image.bands
    left, top = (box_w - image.width) // 2, (box_h - image.height) // 2
    return work.with_image(image.embed(left, top, box_w, box_h, extend="background", background=background))
