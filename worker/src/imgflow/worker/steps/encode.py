"""Write the result; ``keep="none"`` strips EXIF, XMP, IPTC and ICC (the pixels are sRGB already)."""

from __future__ import annotations

import pyvips

from imgflow.core.jobs import OutputFormat


def encode(image: pyvips.Image, fmt: OutputFormat, quality: int) -> bytes:
    if fmt is OutputFormat.jpeg:
        data = image.jpegsave_buffer(Q=quality, optimize_coding=True, keep="none")
    elif fmt is OutputFormat.png:
        data = image.pngsave_buffer(compression=6, keep="none")
    else:
        data = image.webpsave_buffer(Q=quality, keep="none")
    return bytes(data)
