"""The arithmetic both lanes share: the box in the stored frame, cover's crop rectangle and the size
each fit resizes to. Pure functions of sizes, no pixels, so that libvips' steps and the plain JPEG
lane cut and scale a picture alike (tests/test_plain_jpeg.py compares them)."""

from __future__ import annotations

from imgflow.core.outputs import Fit, ThumbnailSpec, focal_point, outside_size

# EXIF orientations that swap width and height when applied
TRANSPOSING = frozenset({5, 6, 7, 8})


def stored_box(spec: ThumbnailSpec, orientation: int) -> tuple[int, int]:
    """The target size in the frame of a picture stored with ``orientation`` not yet applied."""
    return (spec.height, spec.width) if orientation in TRANSPOSING else (spec.width, spec.height)


def stored_point(x: float, y: float, orientation: int) -> tuple[float, float]:
    """The point of the stored image that shows at (x, y) of the displayed one (fractions), for
    each EXIF orientation (2: mirrored, 3: turned 180, 6: to be turned 90 clockwise, ...)."""
    return {
        1: (x, y),
        2: (1 - x, y),
        3: (1 - x, 1 - y),
        4: (x, 1 - y),
        5: (y, x),
        6: (y, 1 - x),
        7: (1 - y, 1 - x),
        8: (1 - y, x),
    }.get(orientation, (x, y))


def start(size: int, keep: int, at: float) -> int:
    """Where a span of ``keep`` of ``size`` starts to be centred on ``at`` (a fraction), inside."""
    return min(max(0, round(at * size - keep / 2)), size - keep)


def region(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """The size of the region of an image of ``size`` that, scaled, covers the box exactly."""
    (image_w, image_h), (box_w, box_h) = size, box
    scale = max(box_w / image_w, box_h / image_h)
    return min(image_w, max(1, round(box_w / scale))), min(image_h, max(1, round(box_h / scale)))


def cover_area(
    size: tuple[int, int], box: tuple[int, int], gravity: str, orientation: int
) -> tuple[int, int, int, int]:
    """Left, top, width and height of what ``cover`` keeps of an image of ``size``, placed where a
    compass point or focal point ``gravity`` (given for the picture as displayed) says."""
    (image_w, image_h), (keep_w, keep_h) = size, region(size, box)
    x, y = stored_point(*focal_point(gravity), orientation)
    return start(image_w, keep_w, x), start(image_h, keep_h, y), keep_w, keep_h


def target_size(width: int, height: int, box: tuple[int, int], fit: Fit) -> tuple[int, int]:
    """The size an image of ``width`` x ``height`` is resized to for ``fit``."""
    box_w, box_h = box
    if fit in (Fit.fill, Fit.cover):  # cover: the crop before has given the image the box's shape
        return box_w, box_h
    if fit is Fit.outside:
        return outside_size(width, height, box)
    scale = min(box_w / width, box_h / height)
    return max(1, min(box_w, round(width * scale))), max(1, min(box_h, round(height * scale)))
