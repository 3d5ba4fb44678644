"""Write the result; ``keep="none"`` strips EXIF, XMP, IPTC and ICC (the pixels are sRGB already)."""

from __future__ import annotations

import pyvips

from imgflow.core.outputs import OutputFormat

# AVIF's quality scale is not JPEG's: 50 looks like JPEG's 85 at a fraction of the bytes (sharp's
# default too); effort 4 of 0-9 keeps a 1080p encode under a second
AVIF_QUALITY = 50
AVIF_EFFORT = 4


def encode(image: pyvips.Image, fmt: OutputFormat, quality: int, asked: int | None = None) -> bytes:
    """``quality`` is the service's JPEG and WebP default; ``asked``, the job's own, wins (PNG is
    lossless and takes none)."""
    if fmt is OutputFormat.jpeg:
        data = image.jpegsave_buffer(Q=asked or quality, optimize_coding=True, keep="none")
    elif fmt is OutputFormat.png:
        data = image.pngsave_buffer(compression=6, keep="none")
    elif fmt is OutputFormat.webp:
        data = image.webpsave_buffer(Q=asked or quality, keep="none")
    elif fmt is OutputFormat.gif:  # 256 colours per frame; an animation keeps its frames and delays
        data = image.gifsave_buffer(keep="none")
    else:
        data = image.heifsave_buffer(
            compression="av1", Q=asked or AVIF_QUALITY, effort=AVIF_EFFORT, keep="none"
        )
    return bytes(data)
