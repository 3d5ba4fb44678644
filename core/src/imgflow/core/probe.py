"""What an upload is, read from its bytes by libvips: format and size, before anything is decoded.

Only the loaders named in ``LOADERS`` may run; every other libvips loader (ImageMagick, PDF, SVG,
matrix and CSV files, ...) is blocked process-wide by ``restrict_loaders``, so bytes that merely
claim to be an image never reach a large, untrusted parser. Needs the ``vips`` extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyvips

# libvips loader class (blocking also covers its _buffer/_source variants) -> our format name
LOADERS = {
    "VipsForeignLoadJpeg": "jpeg",
    "VipsForeignLoadPng": "png",
    "VipsForeignLoadNsgif": "gif",
    "VipsForeignLoadWebp": "webp",
    "VipsForeignLoadTiff": "tiff",
}
# the loader nickname libvips reports in "vips-loader", without its _buffer/_source suffix
_NICKNAMES = {"jpegload": "jpeg", "pngload": "png", "gifload": "gif", "webpload": "webp", "tiffload": "tiff"}
SUPPORTED_FORMATS = tuple(LOADERS.values())
_SAMPLE_BYTES = {"uchar": 1, "char": 1, "ushort": 2, "short": 2, "uint": 4, "int": 4, "float": 4}


class UnsupportedImage(Exception):
    """The bytes are not an image in a format imgflow accepts."""


class ImageTooLarge(Exception):
    """The header declares more pixels than the configured limit."""


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    pages: int
    orientation: int = 1  # EXIF orientation, 1 (upright) when there is none
    bands: int = 3  # with alpha, if any
    sample_bytes: int = 1  # 2 for 16-bit
    # Adam7 PNG or progressive JPEG: the decoder must hold the whole image (or its coefficients)
    interlaced: bool = False

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def displayed(self) -> tuple[int, int]:
        """Width and height as shown, after the EXIF orientation (5-8 turn it a quarter)."""
        return (self.height, self.width) if self.orientation in (5, 6, 7, 8) else (self.width, self.height)


_restricted = False


def restrict_loaders() -> None:
    """Block every libvips loader but ours; idempotent, and done before any image is opened."""
    global _restricted
    if _restricted:
        return
    pyvips.block_untrusted_set(True)
    pyvips.operation_block_set("VipsForeignLoad", True)
    for loader in LOADERS:
        pyvips.operation_block_set(loader, False)
    _restricted = True


def configure_libvips() -> None:
    """imgflow's process-wide libvips policy, for the API and the worker: our loaders only, and no
    operation cache. Every image is new, so the cache would only hold memory, and the open files
    of the sources it keeps (a WebP loader keeps its file open: deleted uploads stayed open)."""
    restrict_loaders()
    pyvips.cache_set_max(0)


def probe_file(path: Path, *, max_pixels: int, max_side: int) -> ImageInfo:
    """Read the header of the image at ``path``; raise if it is not one of ours or too large."""
    restrict_loaders()
    if path.stat().st_size == 0:
        raise UnsupportedImage("The file is empty.")
    try:
        image = pyvips.Image.new_from_file(str(path), access="sequential")
    except pyvips.Error as exc:
        raise UnsupportedImage(_not_an_image()) from exc
    return _check(image, max_pixels, max_side)


def probe_buffer(data: bytes, *, max_pixels: int, max_side: int) -> ImageInfo:
    restrict_loaders()
    if not data:
        raise UnsupportedImage("The file is empty.")
    try:
        image = open_buffer(data, access="sequential")
    except pyvips.Error as exc:
        raise UnsupportedImage(_not_an_image()) from exc
    return _check(image, max_pixels, max_side)


def open_buffer(data: bytes, **options: Any) -> pyvips.Image:
    """Open encoded bytes in place: ``new_from_buffer`` would copy the whole file on every call."""
    return pyvips.Image.new_from_source(pyvips.Source.new_from_memory(data), "", **options)


def _not_an_image() -> str:
    return f"The file is not an image in a supported format ({', '.join(SUPPORTED_FORMATS)})."


def _check(image: pyvips.Image, max_pixels: int, max_side: int) -> ImageInfo:
    loader = str(image.get("vips-loader"))
    fmt = _NICKNAMES.get(loader.removesuffix("_buffer").removesuffix("_source").removesuffix("_file"))
    if fmt is None:  # cannot happen while restrict_loaders holds; refuse rather than trust it
        raise UnsupportedImage(_not_an_image())
    pages = int(image.get("n-pages")) if image.get_typeof("n-pages") else 1
    # A multi-page source is loaded one page at a time, so one page's size is what we decode.
    orientation = int(image.get("orientation")) if image.get_typeof("orientation") else 1
    interlaced = bool(image.get("interlaced")) if image.get_typeof("interlaced") else False
    info = ImageInfo(
        fmt,
        image.width,
        image.height,
        pages,
        orientation,
        bands=image.bands,
        sample_bytes=_SAMPLE_BYTES.get(str(image.format), 8),
        interlaced=interlaced,
    )
    if info.pixels > max_pixels:
        raise ImageTooLarge(
            f"The image is {info.width}x{info.height} = {info.pixels:,} pixels, "
            f"over the limit of {max_pixels:,}."
        )
    # Within the pixel limit, an extreme shape (50,000,000 x 1) still made libvips' resize hold
    # gigabytes; a bound per side keeps every intermediate to what the area limit promises.
    if max(info.width, info.height) > max_side:
        raise ImageTooLarge(
            f"The image is {info.width}x{info.height}: a side over the limit of {max_side:,} pixels."
        )
    return info
