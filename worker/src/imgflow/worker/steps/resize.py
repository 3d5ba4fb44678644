"""Scale the image to the size its fit calls for, in one high-quality pass."""

from __future__ import annotations

from imgflow.core.jobs import Fit
from imgflow.worker.work import Work


def target_size(width: int, height: int, box: tuple[int, int], fit: Fit) -> tuple[int, int]:
    box_w, box_h = box
    if fit in (Fit.fill, Fit.cover):  # cover: the crop before has given the image the box's shape
        return box_w, box_h
    scale = min(box_w / width, box_h / height)
    return max(1, min(box_w, round(width * scale))), max(1, min(box_h, round(height * scale)))


def resize(work: Work) -> Work:
    image = work.image
    new_w, new_h = target_size(image.width, image.height, work.box, work.spec.fit)
    if (new_w, new_h) == (image.width, image.height):
        return work
    band_format = image.format
    # Premultiplied alpha keeps transparent pixels' colour from bleeding into the edges.
    if image.hasalpha():
        image = image.premultiply()
    image = image.resize(new_w / image.width, vscale=new_h / image.height, kernel="lanczos3")
    if work.image.hasalpha():
        image = image.unpremultiply().cast(band_format)
    return work.with_image(image)
