"""Placeholders and facts without servers: ThumbHash and BlurHash against their reference
implementations, the palette, ICC profile names.

The expected hashes were made by the reference implementations, the npm packages thumbhash 0.1.1
(evanw) and blurhash 2.0.5 (Wolt), from the same pixels; a decoded picture is compared by the
SHA-256 of its bytes as the reference decoded it.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable

import numpy as np
import pytest
import pyvips
from PIL import Image

from imgflow.core.icc import profile_name
from imgflow.worker import blurhash, placeholder, thumbhash


def disc() -> thumbhash.Pixels:
    """50x100: an opaque disc, off centre, on a transparent ground; detail in every channel (a
    picture whose terms are exactly 0, by symmetry or separable channels, is hashed by float
    noise, in the reference as here)."""
    y, x = np.mgrid[0:100, 0:50]
    a = (((x - 19) ** 2 + (y - 43) ** 2) < 400) * 255
    channels = [(x * 37 + y * 91) % 256, (x * y * 13 + 40) % 256, (x * 7 + y * y) % 256, a]
    return np.stack(channels, -1).astype(np.uint8)


def pattern() -> thumbhash.Pixels:
    """81x37, opaque, with detail in every channel."""
    y, x = np.mgrid[0:37, 0:81]
    channels = [(x * 37 + y * 91) % 256, (x * y * 13 + 40) % 256, (x * 7 + y * y) % 256, np.full_like(x, 255)]
    return np.stack(channels, -1).astype(np.uint8)


def sunset() -> thumbhash.Pixels:
    y, x = np.mgrid[0:40, 0:60]
    channels = [255 - x * 4, (y * 6) % 256, (x * y) % 256, np.full_like(x, 255)]
    return np.stack(channels, -1).clip(0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("pixels", "expected", "size", "decoded_sha256"),
    [
        (
            disc,
            "3weCAwA0RIukDDgGitZPd0p3iXdQSqc=",
            (19, 32),
            "8ee53e8e0a0dbcf2291d181961fcedc71532c82675076ce1d2df31e4857904b1",
        ),
        (
            pattern,
            "3wcCA4A2BmhzZUF2+4tq/PY=",
            (32, 14),
            "1375024ba87aa0bf0a5605320de15ee43a969f67a033ebae900a9da161ddfca7",
        ),
    ],
)
def test_thumbhash_is_the_references(
    pixels: Callable[[], thumbhash.Pixels], expected: str, size: tuple[int, int], decoded_sha256: str
) -> None:
    made = thumbhash.encode(pixels())
    assert base64.b64encode(made).decode() == expected
    decoded = thumbhash.decode(made)
    assert (decoded.shape[1], decoded.shape[0]) == size
    assert hashlib.sha256(decoded.tobytes()).hexdigest() == decoded_sha256


def test_thumbhash_refuses_more_than_100_pixels_a_side() -> None:
    with pytest.raises(ValueError, match="100x100"):
        thumbhash.encode(np.zeros((101, 10, 4), np.uint8))


def test_blurhash_is_the_references() -> None:
    assert blurhash.encode(sunset()) == "L,I4*F|s$2w]mCjYjrjZgGfhfRfk"
    decoded = blurhash.decode("L2HV0a%WU[=-^6NXO5I+ZNNUlEEZ", 20, 12)
    assert decoded.shape == (12, 20, 3)
    assert hashlib.sha256(decoded.tobytes()).hexdigest() == (
        "876041843ba16b17c1384bd98b99c27624a85b002afa1a1924a30c81d94be434"
    )


def test_blurhash_scales_by_the_largest_term_whatever_its_sign() -> None:
    """The C reference's rule (the JavaScript one takes the largest positive term, and clips a
    larger negative one): decoded, the hash stays close to the picture."""
    picture = pattern()
    hashed = blurhash.encode(picture)
    assert hashed[1] == "3"  # the reference JavaScript says "2" here, too small for a term
    small = np.asarray(Image.fromarray(picture[..., :3]).resize((20, 12), Image.Resampling.BOX), dtype=int)
    assert np.abs(blurhash.decode(hashed, 20, 12).astype(int) - small).mean() < 40


def stripes() -> thumbhash.Pixels:
    """60% red, 30% blue, 10% green, in vertical stripes, opaque."""
    pixels = np.full((20, 100, 4), 255, np.uint8)
    pixels[:, :60, :3] = (200, 30, 30)
    pixels[:, 60:90, :3] = (20, 40, 220)
    pixels[:, 90:, :3] = (30, 200, 60)
    return pixels


def test_the_palette_is_the_pictures_colours_most_common_first() -> None:
    assert placeholder.palette(stripes()) == ["#c81e1e", "#1428dc", "#1ec83c"]


def test_the_palette_leaves_transparent_pixels_out() -> None:
    pixels = stripes()
    pixels[:, :60, 3] = 0  # the red is there, but not seen
    assert placeholder.palette(pixels) == ["#1428dc", "#1ec83c"]


def test_both_lanes_make_the_same_placeholder_of_the_same_picture() -> None:
    """A 128x32 picture of 4x4 blocks: libvips' lane and the plain JPEG lane (Pillow) box it down
    to the same 32x8."""
    rgb = np.ascontiguousarray(stripes()[:8, ::3, :3].repeat(4, axis=0).repeat(4, axis=1)[:, :128])
    vips = placeholder.of_vips(pyvips.Image.new_from_array(rgb, interpretation="srgb"), with_blurhash=True)
    pillow = placeholder.of_pillow(Image.fromarray(rgb), with_blurhash=True)
    assert vips == pillow
    assert vips.dominant_color == "#c81e1e" and vips.blurhash is not None


def test_an_animation_placeholder_is_its_first_frames() -> None:
    first, second = np.full((10, 10, 3), (250, 0, 0), np.uint8), np.full((10, 10, 3), (0, 0, 250), np.uint8)
    strip = pyvips.Image.new_from_array(np.concatenate([first, second]), interpretation="srgb").copy()
    strip.set_type(pyvips.GValue.gint_type, "page-height", 10)
    made = placeholder.of_vips(strip, with_blurhash=False)
    assert made.palette == ["#fa0000"]


@pytest.mark.parametrize(("profile", "name"), [("srgb", "sRGB"), ("cmyk", "Chemical proof")])
def test_an_icc_profiles_name_is_read_from_its_desc_tag(profile: str, name: str) -> None:
    """libvips' built-in profiles: sRGB's a v4 (mluc) description, the CMYK one's a v2 (desc)."""
    image = pyvips.Image.black(8, 8, bands=3).copy(interpretation="srgb") + 100
    if profile == "cmyk":
        image = image.icc_transform("cmyk", intent="perceptual")
    jpeg = image.jpegsave_buffer(profile=profile)
    data = pyvips.Image.new_from_buffer(jpeg, "").get("icc-profile-data")
    assert profile_name(data) == name


@pytest.mark.parametrize("damaged", [b"", b"\0" * 200, b"\0" * 128 + b"\xff\xff\xff\xff" + b"desc" * 3])
def test_a_damaged_profile_has_no_name(damaged: bytes) -> None:
    assert profile_name(damaged) is None


def test_an_rgb_picture_hashes_as_the_same_picture_opaque() -> None:
    rgba = pattern()
    assert thumbhash.encode(np.ascontiguousarray(rgba[..., :3])) == thumbhash.encode(rgba)


@pytest.mark.parametrize(("width", "height"), [(4096, 1), (1, 4096), (4096, 3), (1, 1)])
def test_an_output_of_any_shape_gets_a_placeholder(width: int, height: int) -> None:
    green = np.full((height, width, 3), (10, 200, 30), np.uint8)
    vips = placeholder.of_vips(pyvips.Image.new_from_array(green, interpretation="srgb"), with_blurhash=True)
    pillow = placeholder.of_pillow(Image.fromarray(green), with_blurhash=True)
    assert vips.palette == pillow.palette == ["#0ac81e"]
