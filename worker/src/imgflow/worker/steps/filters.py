"""Filters a job may ask for, on the thumbnail (after the resize: they cost per output pixel, and
their sizes are in output pixels). Each is bounded in the output options (imgflow.core.outputs)."""

from __future__ import annotations

from imgflow.worker.work import Work


def blur(work: Work) -> Work:
    sigma = work.spec.blur
    return work if sigma is None else work.with_image(work.image.gaussblur(sigma).cast("uchar"))


def sharpen(work: Work) -> Work:
    sigma = work.spec.sharpen
    return work if sigma is None else work.with_image(work.image.sharpen(sigma=sigma).cast("uchar"))


def pixelate(work: Work) -> Work:
    """Blocks of ``pixelate`` x ``pixelate`` pixels, each the average of what it covers."""
    size = work.spec.pixelate
    image = work.image
    if size is None:
        return work
    across, down = -(-image.width // size), -(-image.height // size)  # blocks, the last maybe partial
    small = image.resize(across / image.width, vscale=down / image.height, kernel="linear")
    blocks = small.zoom(size, size).crop(0, 0, image.width, image.height)
    return work.with_image(blocks.cast("uchar"))


def grayscale(work: Work) -> Work:
    """Grey, kept as sRGB (R = G = B) so that every output format takes it alike."""
    if not work.spec.grayscale:
        return work
    image = work.image
    alpha = image[image.bands - 1] if image.hasalpha() else None
    grey = image.colourspace("b-w")[0].colourspace("srgb").cast("uchar")
    return work.with_image(grey if alpha is None else grey.bandjoin(alpha))
