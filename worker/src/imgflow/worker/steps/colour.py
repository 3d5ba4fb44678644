"""Bring every source to 8-bit sRGB: embedded ICC profiles, CMYK, greyscale and 16-bit alike.

Done after the resize, on the small image, because colour transforms cost per pixel.
"""

from __future__ import annotations

import contextlib

import pyvips

from imgflow.worker.work import Work


def to_srgb(work: Work) -> Work:
    image = work.image
    if image.get_typeof("icc-profile-data"):
        # a broken profile: fall back to libvips' built-in conversion below
        with contextlib.suppress(pyvips.Error):
            image = image.icc_transform("srgb", embedded=True, intent="perceptual")
    elif image.interpretation == "cmyk":
        # CMYK without a profile: assume the common press profile libvips ships
        image = image.icc_transform("srgb", input_profile="cmyk", intent="perceptual")
    if image.interpretation != "srgb" or image.format != "uchar":
        image = image.colourspace("srgb")
    if image.format != "uchar":
        image = image.cast("uchar")
    return work.with_image(image)
