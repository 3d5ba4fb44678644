"""What an upload is, read from its bytes by libvips: format and size, before anything is decoded.

Only the loaders named in ``LOADERS`` may run; every other libvips loader (ImageMagick, PDF, SVG,
matrix and CSV files, ...) is blocked process-wide by ``restrict_loaders``, so bytes that merely
claim to be an image never reach a large, untrusted parser. Needs the ``vips`` extra.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyvips

from imgflow.core import heif, icc, pages

# libvips loader class (blocking also covers its _buffer/_source variants) -> our format name
LOADERS = {
    "VipsForeignLoadJpeg": "jpeg",
    "VipsForeignLoadPng": "png",
    "VipsForeignLoadNsgif": "gif",
    "VipsForeignLoadWebp": "webp",
    "VipsForeignLoadTiff": "tiff",
    # HEIF, of which only AV1-coded images (AVIF) are accepted: see _heif_codec
    "VipsForeignLoadHeif": "avif",
}
# the loader nickname libvips reports in "vips-loader", without its _buffer/_source suffix
_NICKNAMES = {
    "jpegload": "jpeg",
    "pngload": "png",
    "gifload": "gif",
    "webpload": "webp",
    "tiffload": "tiff",
    "heifload": "avif",
}
SUPPORTED_FORMATS = tuple(LOADERS.values())
# The libheif inside the pyvips-binary wheel decodes AV1 (libaom) and nothing else: no HEVC
# (libde265), so an iPhone's .heic cannot be read. Checked at the door, not left to the decoder.
HEIF_DECODABLE = frozenset({"av01"})
# a BMP's info header sizes (core, v2-v5, OS/2): with "BM", how BMP is told from text starting "BM"
_BMP_INFO_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
# pages of a TIFF, frames of a WebP: libvips counts them all when it reads the header, at a cost
# that grows with their number (pages.py); a thousand costs it a few milliseconds
MAX_PAGES = 1000
_SAMPLE_BYTES = {"uchar": 1, "char": 1, "ushort": 2, "short": 2, "uint": 4, "int": 4, "float": 4}


class UnsupportedImage(Exception):
    """The bytes are not an image in a format imgflow accepts."""


class UndecodableImage(UnsupportedImage):
    """An image in an accepted container that this service cannot decode: HEIF coded with HEVC,
    or a HEIF whose boxes are cut off or damaged."""


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
    profile: bool = False  # an embedded ICC profile
    profile_name: str | None = None  # the profile's own name for itself, when it gives one
    alpha: bool = False  # an alpha band (a CMYK image's fourth band is not one)

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
    with path.open("rb") as file:
        if pages.paged(file.read(12)):
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                _check_pages(mapped)
    try:
        image = pyvips.Image.new_from_file(str(path), access="sequential")
    except pyvips.Error as exc:
        with path.open("rb") as file:
            raise _refusal(file.read(18), exc) from exc
    return _check(image, max_pixels, max_side, path.read_bytes)


def probe_buffer(data: bytes, *, max_pixels: int, max_side: int) -> ImageInfo:
    restrict_loaders()
    if not data:
        raise UnsupportedImage("The file is empty.")
    _check_pages(data)
    try:
        image = open_buffer(data, access="sequential")
    except pyvips.Error as exc:
        raise _refusal(data[:18], exc) from exc
    return _check(image, max_pixels, max_side, lambda: data)


def _check_pages(data: pages.Data) -> None:
    try:
        pages.check_pages(data, MAX_PAGES)
    except pages.TooManyPages as exc:
        raise ImageTooLarge(str(exc)) from exc


def open_buffer(data: bytes, **options: Any) -> pyvips.Image:
    """Open encoded bytes in place: ``new_from_buffer`` would copy the whole file on every call."""
    return pyvips.Image.new_from_source(pyvips.Source.new_from_memory(data), "", **options)


def _not_an_image() -> str:
    return f"The file is not an image in a supported format ({', '.join(SUPPORTED_FORMATS)})."


def _refusal(head: bytes, exc: pyvips.Error) -> UnsupportedImage:
    """Why libvips could not open the bytes, in words that help the sender."""
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_INFO_HEADER_SIZES:
        return UnsupportedImage(
            "BMP is not accepted: libvips decodes BMP only through ImageMagick, which imgflow "
            "blocks as an untrusted parser (and which this service does not ship). "
            "Convert the image to PNG and send it again."
        )
    # the heif loader claimed the bytes (their ftyp brand), then libheif refused them
    heif_lines = [line for line in str(exc.detail).splitlines() if line.startswith("heif: ")]
    if heif_lines:
        return UndecodableImage(
            "The file is HEIF/AVIF but cannot be read (truncated or damaged): "
            f"{heif_lines[-1].removeprefix('heif: ').strip()}"
        )
    return UnsupportedImage(_not_an_image())


def _heif_codec(data: bytes) -> None:
    """Refuse a HEIF whose primary image is coded with anything but what our libheif decodes."""
    try:
        codecs = heif.primary_codecs(data)
    except heif.HeifStructureError as exc:
        raise UndecodableImage(f"The HEIF/AVIF file is malformed: {exc}.") from exc
    if not codecs <= HEIF_DECODABLE:
        names = ", ".join(sorted({heif.CODECS.get(c, repr(c)) for c in codecs - HEIF_DECODABLE}))
        hevc = " (as iPhones save .heic photos)" if "HEVC" in names else ""
        raise UndecodableImage(
            f"The image is HEIF coded with {names}{hevc}; this service decodes HEIF only when it is "
            "AV1-coded (AVIF): its libheif has no decoder for that codec. "
            "Convert the image to JPEG or AVIF and send it again."
        )


def _check(image: pyvips.Image, max_pixels: int, max_side: int, read: Callable[[], bytes]) -> ImageInfo:
    loader = str(image.get("vips-loader"))
    fmt = _NICKNAMES.get(loader.removesuffix("_buffer").removesuffix("_source").removesuffix("_file"))
    if fmt is None:  # cannot happen while restrict_loaders holds; refuse rather than trust it
        raise UnsupportedImage(_not_an_image())
    pages = int(image.get("n-pages")) if image.get_typeof("n-pages") else 1
    # A multi-page source is loaded one page at a time, so one page's size is what we decode.
    # (A HEIF's n-pages counts its top-level images; libvips loads only the primary one.)
    orientation = int(image.get("orientation")) if image.get_typeof("orientation") else 1
    if fmt == "avif":
        # HEIF turns and mirrors with irot/imir boxes, which libheif applies while decoding (the
        # header's size is already the displayed one); an EXIF orientation in a HEIF is to be
        # ignored, and applying it as well would turn the picture twice.
        orientation = 1
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
        profile=bool(image.get_typeof("icc-profile-data")),
        profile_name=icc.profile_name(image.get("icc-profile-data"))
        if image.get_typeof("icc-profile-data")
        else None,
        alpha=bool(image.hasalpha()),
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
    if fmt == "avif":  # after the header's limits: they cost nothing, the walk a little
        _heif_codec(read())
    return info
