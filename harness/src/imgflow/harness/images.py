"""Real images of many kinds, made with libvips (and Pillow where libvips cannot write the kind)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pyvips


def photo(width: int, height: int, seed_colour: tuple[int, int, int] = (180, 90, 40)) -> pyvips.Image:
    """Photo-like content (noise over a gradient) so codecs and resamplers do real work."""
    gradient = pyvips.Image.xyz(width, height)[0].linear(200 / max(width, 1), 20)
    noise = pyvips.Image.gaussnoise(width, height, sigma=25, mean=0)
    rgb = [(gradient * (c / 255) + noise).cast("uchar") for c in seed_colour]
    return rgb[0].bandjoin(rgb[1:]).copy(interpretation="srgb")


def halves(width: int, height: int) -> pyvips.Image:
    """Left half pure red, right half pure blue: for checking orientation after processing."""
    left = pyvips.Image.black(width // 2, height, bands=3) + [255, 0, 0]
    right = pyvips.Image.black(width - width // 2, height, bands=3) + [0, 0, 255]
    return left.join(right, "horizontal").cast("uchar").copy(interpretation="srgb")


def jpeg(width: int = 640, height: int = 480, *, progressive: bool = False) -> bytes:
    return bytes(photo(width, height).jpegsave_buffer(Q=90, interlace=progressive))


def png_alpha(width: int = 320, height: int = 240) -> bytes:
    image = photo(width, height)
    alpha = pyvips.Image.xyz(width, height)[0].linear(255 / width, 0).cast("uchar")
    return bytes(image.bandjoin(alpha).pngsave_buffer())


def png_palette(width: int = 300, height: int = 200) -> bytes:
    return bytes(photo(width, height).pngsave_buffer(palette=True, bitdepth=8))


def png_16bit(width: int = 300, height: int = 200) -> bytes:
    image = (photo(width, height).cast("ushort") * 257).copy(interpretation="rgb16")
    return bytes(image.pngsave_buffer(bitdepth=16))


def webp(width: int = 400, height: int = 300) -> bytes:
    return bytes(photo(width, height).webpsave_buffer(Q=90))


def gif(width: int = 200, height: int = 150) -> bytes:
    return bytes(photo(width, height).gifsave_buffer())


def tiff(width: int = 300, height: int = 200) -> bytes:
    return bytes(photo(width, height).tiffsave_buffer(compression="deflate"))


def exif_rotated(width: int = 400, height: int = 200, orientation: int = 6) -> bytes:
    """A JPEG stored ``width`` x ``height`` whose EXIF says: rotate before showing."""
    image = halves(width, height).copy()
    image.set_type(pyvips.GValue.gint_type, "orientation", orientation)
    return bytes(image.jpegsave_buffer(Q=95))


def cmyk_jpeg(width: int = 300, height: int = 200) -> bytes:
    """A CMYK JPEG (as print workflows produce) whose colour is a known orange."""
    orange = (pyvips.Image.black(width, height, bands=3) + [230, 120, 20]).cast("uchar")
    cmyk = orange.copy(interpretation="srgb").icc_transform("cmyk", intent="perceptual")
    return bytes(cmyk.jpegsave_buffer(Q=95))


def one_pixel() -> bytes:
    return bytes((pyvips.Image.black(1, 1, bands=3) + [10, 200, 30]).cast("uchar").pngsave_buffer())


def very_wide() -> bytes:
    return jpeg(4000, 10)


def very_tall() -> bytes:
    return jpeg(10, 3000)


def animated_gif(frames: int = 3, width: int = 64, height: int = 48) -> bytes:
    pages = [photo(width, height, (60 * i, 100, 200 - 50 * i)) for i in range(frames)]
    strip = pyvips.Image.arrayjoin(pages, across=1).copy()
    strip.set_type(pyvips.GValue.gint_type, "page-height", height)
    return bytes(strip.gifsave_buffer())


def png_bomb(width: int = 60_000, height: int = 60_000) -> bytes:
    """A tiny PNG whose header declares width x height pixels (3.6 gigapixels by default)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + 3 * width) * 4)  # a few rows; the rest is "missing"
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def truncated_jpeg() -> bytes:
    data = jpeg(800, 600)
    return data[: len(data) // 2]


# name -> (bytes factory, expected source format)
VALID: dict[str, tuple[Callable[[], bytes], str]] = {
    "baseline_jpeg": (jpeg, "jpeg"),
    "progressive_jpeg": (lambda: jpeg(progressive=True), "jpeg"),
    "png_alpha": (png_alpha, "png"),
    "png_palette": (png_palette, "png"),
    "png_16bit": (png_16bit, "png"),
    "webp": (webp, "webp"),
    "gif": (gif, "gif"),
    "animated_gif": (animated_gif, "gif"),
    "tiff": (tiff, "tiff"),
    "exif_rotated": (exif_rotated, "jpeg"),
    "cmyk_jpeg": (cmyk_jpeg, "jpeg"),
    "one_pixel": (one_pixel, "png"),
    "very_wide": (very_wide, "jpeg"),
    "very_tall": (very_tall, "jpeg"),
}


def make_source(kind: str, width: int, height: int, path: Path) -> None:
    """A large source of ``kind`` (bench/studies/memory.py's KINDS) written to ``path``: gradients, so
    every kind stays small on disk however many pixels it declares."""
    base = pyvips.Image.xyz(width, height)[0].linear(200 / width, 20).cast("uchar")
    rgb = base.bandjoin([base.linear(0.5, 30).cast("uchar"), base.linear(-0.5, 230).cast("uchar")])
    if kind.startswith("png16-rgba"):
        image = (rgb.bandjoin(base).cast("ushort") * 257).copy(interpretation="rgb16")
        image.pngsave(str(path), bitdepth=16, compression=1, interlace=kind.endswith("interlaced"))
    elif kind == "tiff32-rgb":  # 32-bit integer samples: accepted, but four times the memory of 8-bit
        (rgb.cast("uint") * 16843009).copy(interpretation="srgb").tiffsave(str(path), compression="deflate")
    elif kind == "tiff16-rgb":
        (rgb.cast("ushort") * 257).cast("ushort").copy(interpretation="rgb16").tiffsave(
            str(path), compression="deflate"
        )
    elif kind == "avif":  # 8-bit 4:2:0, as cameras and encoders make by default
        rgb.copy(interpretation="srgb").heifsave(str(path), compression="av1", effort=0)
    elif kind == "avif12-rgba-444":  # the most bytes per pixel libheif decodes to
        image = (rgb.bandjoin(base).cast("ushort") * 257).copy(interpretation="rgb16")
        image.heifsave(str(path), compression="av1", effort=0, bitdepth=12, subsample_mode="off")
    elif kind == "gif":
        rgb.copy(interpretation="srgb").gifsave(str(path), effort=1)
    else:
        rgb.copy(interpretation="srgb").jpegsave(str(path), Q=85, interlace=kind == "jpeg-progressive")
