"""JPEG sources decoded by TurboJPEG (worker/steps/load.py): the same pixels libvips' own decoder
gives at every shrink-on-load, and anything TurboJPEG should not or cannot decode left to libvips
(real JPEGs, no servers)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import pyvips
import simplejpeg

from imgflow.core.outputs import ThumbnailSpec
from imgflow.core.probe import ImageInfo, probe_buffer
from imgflow.harness import images
from imgflow.worker.pipeline import make_thumbnails
from imgflow.worker.steps.load import decoded_size, load_options, open_source, turbo_decode

LIMIT = 50_000_000
SIDE = 16_384


def info_of(data: bytes) -> ImageInfo:
    return probe_buffer(data, max_pixels=LIMIT, max_side=SIDE)


def psnr(first: pyvips.Image, second: pyvips.Image) -> float:
    mse = ((first.cast("float") - second) ** 2).avg()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


KINDS = {
    "4:2:0": lambda: bytes(images.photo(997, 601).jpegsave_buffer(Q=85)),
    "4:4:4": lambda: bytes(images.photo(997, 601).jpegsave_buffer(Q=95, subsample_mode="off")),
    "progressive": lambda: bytes(images.photo(997, 601).jpegsave_buffer(Q=85, interlace=True)),
    "grey": lambda: bytes(images.photo(997, 601)[0].copy(interpretation="b-w").jpegsave_buffer(Q=90)),
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("box", [100, 200, 400, 900])  # shrink 8, 4, 2 and none
def test_turbojpeg_decodes_what_libvips_decodes(kind: str, box: int) -> None:
    data = KINDS[kind]()
    info = info_of(data)
    options = load_options(info, [ThumbnailSpec(width=box, height=box)])
    pixels = turbo_decode(data, info, options)
    assert pixels is not None
    theirs = pyvips.Image.new_from_buffer(data, "", **options)
    height, width, bands = pixels.shape
    assert (width, height, bands) == (*decoded_size(info, options), theirs.bands)
    # libvips leaves out a last column or row the shrink covers only in part; libjpeg keeps it
    assert (width - theirs.width, height - theirs.height) in ((0, 0), (1, 1), (0, 1), (1, 0))
    ours = pyvips.Image.new_from_memory(pixels, width, height, bands, "uchar")
    # libjpeg-turbo and the wheel's mozjpeg share their IDCT and upsampling: the same pixels
    assert psnr(ours.crop(0, 0, theirs.width, theirs.height), theirs) == math.inf, (kind, box)


def test_an_output_of_a_tagged_and_turned_jpeg_keeps_the_profile_and_orientation() -> None:
    tagged = images.photo(600, 400).copy()
    profile = images.photo(1, 1).icc_transform("srgb").get("icc-profile-data")
    tagged.set_type(pyvips.GValue.blob_type, "icc-profile-data", profile)
    tagged.set_type(pyvips.GValue.gint_type, "orientation", 6)
    data = bytes(tagged.jpegsave_buffer(Q=90))
    info = info_of(data)
    specs = [ThumbnailSpec(width=100, height=100)]
    assert turbo_decode(data, info, load_options(info, specs)) is not None  # TurboJPEG's, not libvips'
    image = open_source(data, info, specs)
    assert bytes(image.get("icc-profile-data")) == bytes(profile)
    assert image.get("orientation") == 6


def test_what_turbojpeg_should_not_decode_goes_to_libvips() -> None:
    spec = [ThumbnailSpec(width=100, height=100)]
    cmyk = images.cmyk_jpeg()
    assert turbo_decode(cmyk, info_of(cmyk), load_options(info_of(cmyk), spec)) is None
    assert open_source(cmyk, info_of(cmyk), spec).bands == 4  # libvips' CMYK, colour-managed later
    data = images.jpeg(640, 480)
    info = info_of(data)
    other = dataclasses.replace(info, width=320)  # a header the probe read differently
    assert turbo_decode(data, other, load_options(other, spec)) is None


def test_a_cut_off_jpeg_is_not_decoded_by_turbojpeg_and_libvips_says_why() -> None:
    data = images.truncated_jpeg()
    info = info_of(data)
    spec = [ThumbnailSpec(width=100, height=100)]
    assert turbo_decode(data, info, load_options(info, spec)) is None
    with pytest.raises(pyvips.Error, match=r"(?i)premature|truncat"):
        open_source(data, info, spec).avg()


def test_a_file_turbojpeg_refuses_is_tried_once_then_decoded_by_libvips(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A plain job (the lane) whose bytes TurboJPEG refuses goes to the libvips steps, which must
    not hand the same bytes to TurboJPEG again."""
    tries = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        tries.append(1)
        return decode_jpeg(*args, **kwargs)

    decode_jpeg = simplejpeg.decode_jpeg
    monkeypatch.setattr(simplejpeg, "decode_jpeg", counted)
    with pytest.raises(pyvips.Error, match=r"(?i)premature|truncat"):
        make_thumbnails(
            images.truncated_jpeg(),
            [ThumbnailSpec(width=100, height=100)],
            max_pixels=LIMIT,
            max_side=SIDE,
            quality=85,
        )
    assert len(tries) == 1
