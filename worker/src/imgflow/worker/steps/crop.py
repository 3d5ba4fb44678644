"""``cover``: cut the overflow away, keeping the centre."""

from __future__ import annotations

from imgflow.core.jobs import Fit
from imgflow.worker.work import Work


def crop(work: Work) -> Work:
    if work.spec.fit is not Fit.cover:
        return work
    box_w, box_h = work.box
    image = work.image
    if (image.width, image.height) == (box_w, box_h):
        return work
    left, top = (image.width - box_w) // 2, (image.height - box_h) // 2
    return work.with_image(image.extract_area(left, top, box_w, box_h))
