"""``cover``: cut away what overflows the box's shape, keeping the centre.

Runs before the resize, so only the part that is kept gets resampled, and it is resampled to the
box exactly: resizing first and cropping after rounds the intermediate size and stretches the
picture by a fraction of a pixel (0.1 dB PSNR on a 12 MP photo).
"""

from __future__ import annotations

from imgflow.core.jobs import Fit
from imgflow.worker.work import Work


def crop(work: Work) -> Work:
    if work.spec.fit is not Fit.cover:
        return work
    box_w, box_h = work.box
    image = work.image
    scale = max(box_w / image.width, box_h / image.height)
    # the region that, scaled by ``scale``, covers the box exactly
    width = min(image.width, max(1, round(box_w / scale)))
    height = min(image.height, max(1, round(box_h / scale)))
    if (width, height) == (image.width, image.height):
        return work
    left, top = (image.width - width) // 2, (image.height - height) // 2
    return work.with_image(image.extract_area(left, top, width, height))
