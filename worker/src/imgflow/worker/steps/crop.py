"""``cover``: cut away what overflows the box's shape, keeping the part the job's gravity names
(the centre by default, a compass point, a focal point, or what libvips' smartcrop finds most
interesting).

Runs before the resize, so only the part that is kept gets resampled, and it is resampled to the
box exactly: resizing first and cropping after rounds the intermediate size and stretches the
picture by a fraction of a pixel (0.1 dB PSNR on a 12 MP photo). It also runs before the EXIF
rotation, so the gravity, given for the picture as displayed, is turned into the stored frame.
"""

from __future__ import annotations

from imgflow.core.outputs import SMART, Fit, ThumbnailSpec
from imgflow.worker.steps.geometry import cover_area, region
from imgflow.worker.work import Work


def steady(work: Work) -> ThumbnailSpec:
    """The spec for every frame of an animation: smartcrop would choose its region frame by frame
    and the picture would jump about, so the point it finds on this (the first) frame becomes a
    focal point for all of them."""
    spec = work.spec
    if spec.fit is not Fit.cover or spec.gravity not in SMART or work.orientation not in (0, 1):
        return spec
    image = work.image
    width, height = region((image.width, image.height), work.box)
    _, found = image.smartcrop(width, height, interesting=spec.gravity, attention_x=True, attention_y=True)
    x, y = found["attention_x"] / image.width, found["attention_y"] / image.height
    return spec.model_copy(update={"gravity": f"fp:{min(x, 1):.4f},{min(y, 1):.4f}"})


def crop(work: Work) -> Work:
    if work.spec.fit is not Fit.cover:
        return work
    image = work.image
    width, height = region((image.width, image.height), work.box)
    if (width, height) == (image.width, image.height):
        return work
    if work.spec.gravity in SMART:  # found in the pixels: the same in any orientation
        return work.with_image(image.smartcrop(width, height, interesting=work.spec.gravity))
    area = cover_area((image.width, image.height), work.box, work.spec.gravity, work.orientation)
    return work.with_image(image.extract_area(*area))
