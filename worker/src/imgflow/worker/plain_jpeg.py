"""The plain JPEG lane: a JPEG made into JPEGs with nothing but a crop and a resize, decoded by
TurboJPEG (as every small JPEG decode, steps/load.py) and done by Pillow from there to the encode.

Most jobs are this (the original contract's 100x100 ``cover`` JPEG). For them libvips' fixed cost
per image was the larger part of what kept imgflow below Pillow: on the small picture a JPEG
decodes to at 1/8, building and running libvips' crop, lanczos3 resize and JPEG save cost several
times what Pillow's resize and save do (bench/README.md, The plain JPEG lane).
TurboJPEG's decode and Pillow's resize and encode also release the GIL, so two jobs in one worker
process run side by side, which pyvips' many small calls did not.

Its steps, run in the order ``pipeline.PLAIN_JPEG_STEPS`` lists them, take the same geometry as
the libvips steps from the same functions (``steps/geometry.py``), the same lanczos3 kernel with
the same block-average gap, the same JPEG encoder settings as ``steps/encode.py`` (libvips writes
mozjpeg with its libjpeg-turbo-compatible defaults: Annex K tables, 4:2:0 below quality 90,
optimised Huffman tables), so a job's result does not depend on its lane beyond the resampler's
rounding (tests/test_plain_jpeg.py measures it).

Anything else goes to the libvips steps: another output format, a smart crop, a filter, a
watermark, an enlargement, an ICC profile (colour management is libvips'), CMYK, or anything
TurboJPEG cannot decode as the probe described it.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, replace

from PIL import Image

from imgflow.core.outputs import SMART, Fit, OutputFormat, ThumbnailSpec
from imgflow.core.probe import ImageInfo
from imgflow.worker.steps.geometry import cover_area, stored_box, target_size
from imgflow.worker.steps.load import load_options, source_reduction, turbo_decode, turbo_decodes
from imgflow.worker.steps.resize import LANCZOS_GAP

# EXIF orientation -> the transpose that makes the picture upright (as ImageOps.exif_transpose)
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
WHITE = (255, 255, 255)  # contain's padding on JPEG, as steps/pad.py


def takes(info: ImageInfo, specs: Sequence[ThumbnailSpec]) -> bool:
    """Whether the job is plain enough for this lane, from the probe and the specs alone: decided
    before decoding, so that a job the lane turns away is not decoded twice."""
    # enlarging is left to libvips, whose upsampling is not a lanczos3 like Pillow's (23 dB apart);
    # colour management (an ICC profile) and CMYK (4 bands) are libvips' too
    return (
        turbo_decodes(info, load_options(info, specs))
        and not info.profile
        and info.bands in (1, 3)
        and all(_plain(spec) for spec in specs)
        and all(source_reduction(info, spec) >= 1 for spec in specs)
    )


def held_bytes(width: int, height: int, source_height: int) -> int:
    """What the lane holds for one ``width`` x ``height`` output beyond its decode (counted by
    memory.py with the decode): the resize's horizontal pass, the picture and its turned or padded
    copy, Pillow keeping RGB in 4 bytes a pixel."""
    return (max(width, height) * source_height + 2 * width * height) * 4


def _plain(spec: ThumbnailSpec) -> bool:
    return (
        spec.format is OutputFormat.jpeg
        and not (spec.fit is Fit.cover and spec.gravity in SMART)
        and spec.blur is None
        and spec.sharpen is None
        and spec.pixelate is None
        and not spec.grayscale
        and spec.watermark is None
    )


@dataclass(frozen=True)
class Picture:
    """What flows through the lane's steps: ``Work`` for a Pillow picture."""

    image: Image.Image
    spec: ThumbnailSpec
    orientation: int = 1  # EXIF orientation not yet applied to ``image``
    # left, top, right, bottom of the part of ``image`` the resize reads: Pillow resamples straight
    # from it, so cover's crop costs no copy
    area: tuple[int, int, int, int] | None = None

    @property
    def box(self) -> tuple[int, int]:
        return stored_box(self.spec, self.orientation)


def decode(data: bytes, info: ImageInfo, specs: Sequence[ThumbnailSpec]) -> Image.Image | None:
    """The decoded source, RGB (grey decoded to RGB: the libvips steps make every output sRGB);
    None when TurboJPEG does not decode the picture the probe saw."""
    pixels = turbo_decode(data, info, load_options(info, specs), rgb=True)
    if pixels is None:
        return None
    height, width, _ = pixels.shape
    return Image.frombuffer("RGB", (width, height), pixels, "raw", "RGB", 0, 1)


def crop(picture: Picture) -> Picture:
    """``cover``: the part to keep, where the gravity says (as steps/crop.py, without smartcrop)."""
    if picture.spec.fit is not Fit.cover:
        return picture
    left, top, width, height = cover_area(
        picture.image.size, picture.box, picture.spec.gravity, picture.orientation
    )
    return replace(picture, area=(left, top, left + width, top + height))


def resize(picture: Picture) -> Picture:
    """lanczos3 from the area to the size the fit calls for, as steps/resize.py."""
    width, height = picture.image.size
    area = picture.area or (0, 0, width, height)
    left, top, right, bottom = area
    size = target_size(right - left, bottom - top, picture.box, picture.spec.fit)
    image = picture.image.resize(size, Image.Resampling.LANCZOS, box=area, reducing_gap=LANCZOS_GAP)
    return replace(picture, image=image, area=None)


def autorotate(picture: Picture) -> Picture:
    """Apply the EXIF orientation, as steps/rotate.py."""
    if picture.orientation not in _UPRIGHT:
        return picture
    return replace(picture, image=picture.image.transpose(_UPRIGHT[picture.orientation]), orientation=1)


def pad(picture: Picture) -> Picture:
    """``contain``: centre on a white canvas of the box's size, as steps/pad.py does for JPEG."""
    spec, image = picture.spec, picture.image
    if spec.fit is not Fit.contain or image.size == (spec.width, spec.height):
        return picture
    canvas = Image.new("RGB", (spec.width, spec.height), WHITE)
    canvas.paste(image, ((spec.width - image.width) // 2, (spec.height - image.height) // 2))
    return replace(picture, image=canvas)


def encode(image: Image.Image, quality: int) -> tuple[bytes, int, int]:
    out = io.BytesIO()
    # libvips' jpegsave: chroma subsampled below quality 90, not from 90 up
    image.save(out, "JPEG", quality=quality, optimize=True, subsampling="4:2:0" if quality < 90 else "4:4:4")
    return out.getvalue(), image.width, image.height
