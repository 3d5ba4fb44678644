"""The plain JPEG lane (worker/plain_jpeg.py): which jobs take it, and that a job's result does not
depend on its lane (real JPEGs, TurboJPEG and Pillow against the libvips steps, no servers)."""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
import pyvips
from PIL import Image

from imgflow.core.outputs import ThumbnailSpec
from imgflow.core.probe import ImageInfo, probe_buffer
from imgflow.harness import images
from imgflow.worker import plain_jpeg
from imgflow.worker.pipeline import libvips_thumbnails, make_thumbnails, plain_jpeg_thumbnails

LIMIT = 50_000_000
SIDE = 16_384


def info_of(data: bytes) -> ImageInfo:
    return probe_buffer(data, max_pixels=LIMIT, max_side=SIDE)


def spec(**fields: Any) -> ThumbnailSpec:
    return ThumbnailSpec.model_validate(fields)


def photo_jpeg(width: int = 1200, height: int = 800, orientation: int = 1) -> bytes:
    image = images.photo(width, height).copy()
    if orientation != 1:
        image.set_type(pyvips.GValue.gint_type, "orientation", orientation)
    return bytes(image.jpegsave_buffer(Q=90))


def psnr(a: bytes, b: bytes) -> float:
    first, second = pyvips.Image.new_from_buffer(a, ""), pyvips.Image.new_from_buffer(b, "")
    mse = ((first.cast("float") - second) ** 2).avg()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def test_a_plain_jpeg_job_takes_the_lane() -> None:
    info = info_of(photo_jpeg())
    assert plain_jpeg.takes(info, [spec()])
    assert plain_jpeg.takes(info, [spec(width=300, height=200, fit="inside"), spec(gravity="north")])


@pytest.mark.parametrize(
    "fields",
    [
        {"format": "webp"},
        {"format": "png"},
        {"gravity": "attention"},
        {"blur": 2},
        {"sharpen": 1},
        {"pixelate": 4},
        {"grayscale": True},
        {"watermark": "wm_0123456789abcdef"},
        {"width": 1600, "height": 1000},  # enlarges: libvips' upsampling
    ],
)
def test_anything_more_than_a_crop_and_resize_goes_to_libvips(fields: dict[str, Any]) -> None:
    info = info_of(photo_jpeg())
    assert not plain_jpeg.takes(info, [spec(**fields)])
    assert not plain_jpeg.takes(info, [spec(), spec(**fields)])  # one such output is enough


def test_sources_the_lane_would_not_render_as_libvips_does_go_to_libvips() -> None:
    assert not plain_jpeg.takes(info_of(images.png_alpha()), [spec()])
    cmyk = images.cmyk_jpeg()
    assert not plain_jpeg.takes(info_of(cmyk), [spec()])  # from the header: never decoded here
    assert plain_jpeg_thumbnails(cmyk, info_of(cmyk), [spec()], 85) is None
    tagged = images.photo(600, 400).copy()
    tagged.set_type(
        pyvips.GValue.blob_type,
        "icc-profile-data",
        images.photo(1, 1).icc_transform("srgb").get("icc-profile-data"),
    )
    with_profile = bytes(tagged.jpegsave_buffer(Q=90))
    assert pyvips.Image.new_from_buffer(with_profile, "").get_typeof("icc-profile-data")
    assert not plain_jpeg.takes(info_of(with_profile), [spec()])  # from the header too


CASES = [
    {},
    {"gravity": "north-west"},
    {"gravity": "fp:0.8,0.3"},
    {"width": 300, "height": 120},
    {"fit": "fill", "width": 200, "height": 50},
    {"fit": "inside", "width": 333, "height": 100},
    {"fit": "outside", "width": 90, "height": 300},
    {"fit": "contain", "width": 150, "height": 150},
    {"width": 1000, "height": 700, "quality": 95},
]


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize(
    "fields", CASES, ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()) or "default"
)
def test_both_lanes_make_the_same_picture(fields: dict[str, Any], orientation: int) -> None:
    data = photo_jpeg(orientation=orientation)
    info, wanted = info_of(data), spec(**fields)
    if not plain_jpeg.takes(info, [wanted]):
        assert orientation >= 5 and fields.get("width") == 1000  # turned, it enlarges
        return
    made = plain_jpeg_thumbnails(data, info, [wanted], 85)
    assert made is not None
    [thumbnail] = made
    lane, width, height = thumbnail.data, thumbnail.width, thumbnail.height
    [steps] = libvips_thumbnails(data, info, [wanted], quality=85)
    assert (width, height) == (steps.width, steps.height)
    shown = Image.open(io.BytesIO(lane))
    assert shown.size == (width, height) and shown.mode == "RGB"
    # two lanczos3 implementations on sensor-like noise: 38-49 dB apart where they resample,
    # identical where the shrink-on-load alone reached the box; a wrong crop or turn is < 25 dB
    assert psnr(lane, steps.data) > 36


def test_the_lane_encodes_as_libvips_jpegsave_does() -> None:
    """Same pixels, same quantisation and chroma subsampling (off from quality 90), so the decoded
    pictures are identical; only the header differs (Pillow writes a JFIF marker)."""
    picture = images.photo(200, 150)
    pixels = Image.frombytes("RGB", (200, 150), picture.write_to_memory())
    for quality in (60, 85, 90, 97):
        ours, _, _ = plain_jpeg.encode(pixels, quality)
        theirs = bytes(picture.jpegsave_buffer(Q=quality, optimize_coding=True, keep="none"))
        assert psnr(ours, theirs) == math.inf, quality
        assert abs(len(ours) - len(theirs)) <= 18, quality


def test_a_grey_jpeg_becomes_an_srgb_jpeg_in_either_lane() -> None:
    grey = bytes(images.photo(600, 400)[0].copy(interpretation="b-w").jpegsave_buffer(Q=90))
    [made] = make_thumbnails(grey, [spec()], max_pixels=LIMIT, max_side=SIDE, quality=85)
    out = pyvips.Image.new_from_buffer(made.data, "")
    assert out.bands == 3 and out.interpretation == "srgb"
    [steps] = libvips_thumbnails(grey, info_of(grey), [spec()], quality=85)
    assert psnr(made.data, steps.data) > 36
