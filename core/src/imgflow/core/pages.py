"""How many pages a TIFF, or frames a WebP, holds: counted from its structure, with bounds, before
libvips reads the header.

libvips counts every page when it reads a header ("n-pages"), and for these two formats that costs
more than the rest of the probe together: libtiff walks the whole chain of directories (linear, but
a 10 MiB file holds tens of thousands), and libvips asks libwebp for each frame by its number,
which walks the frame list from the start every time (quadratic: 10 MiB of frames would take
minutes; bench/studies/README.md, Counting TIFF pages and WebP frames). Counting here stops after
``limit`` pages, follows each TIFF directory once (a chain that loops back is counted until it
does), and reads at most ``limit`` plus ``EXTRA_CHUNKS`` WebP chunks, so it costs well under a
millisecond whatever the file says.
"""

from __future__ import annotations

import mmap
import struct

# the file's bytes, or the file mapped (so that a large file is not read into memory to be counted)
Data = bytes | mmap.mmap
# chunks a WebP may hold besides its frames: VP8X, ICCP, ANIM, EXIF, XMP and unknown ones
EXTRA_CHUNKS = 64


class TooManyPages(ValueError):
    """The file holds more pages (or WebP chunks) than the limit."""


def _is_tiff(head: Data) -> bool:
    return head[:4] in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


def _is_webp(head: Data) -> bool:
    return head[:4] == b"RIFF" and head[8:12] == b"WEBP"


def paged(head: bytes) -> bool:
    """Whether a file starting with these 12 bytes is one whose pages ``check_pages`` counts."""
    return _is_tiff(head) or _is_webp(head)


def check_pages(data: Data, limit: int) -> None:
    """Raise ``TooManyPages`` if ``data`` is a TIFF or WebP with more than ``limit`` pages."""
    most = f"the most this service reads in one file is {limit:,}"
    if _is_tiff(data) and _tiff_pages(data, limit) > limit:
        raise TooManyPages(f"The TIFF holds more than {limit:,} pages: {most}.")
    if _is_webp(data):
        frames, chunks = _webp_frames(data, limit + EXTRA_CHUNKS)
        if frames > limit:
            raise TooManyPages(f"The WebP holds more than {limit:,} frames: {most}.")
        if chunks > limit + EXTRA_CHUNKS:
            raise TooManyPages(f"The WebP is made of more than {limit + EXTRA_CHUNKS:,} chunks.")


def _tiff_pages(data: Data, limit: int) -> int:
    """Directories in the main chain, up to ``limit`` + 1; a loop or a cut-off ends the count."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\0", b"\0+")  # BigTIFF: 8-byte offsets and counts, 20-byte entries
    offset_format, count_format, entry_size = ("Q", "Q", 20) if big else ("I", "H", 12)
    offset_size, count_size = (8, 8) if big else (4, 2)
    if len(data) < 8 + offset_size:
        return 0
    (offset,) = struct.unpack_from(order + offset_format, data, 8 if big else 4)
    seen: set[int] = set()
    while offset and offset not in seen and len(seen) <= limit:
        if offset + count_size > len(data):
            break
        seen.add(offset)
        (entries,) = struct.unpack_from(order + count_format, data, offset)
        following = offset + count_size + entries * entry_size
        if following + offset_size > len(data):
            break
        (offset,) = struct.unpack_from(order + offset_format, data, following)
    return len(seen)


def _webp_frames(data: Data, max_chunks: int) -> tuple[int, int]:
    """(ANMF chunks, all chunks) at the top level, reading at most ``max_chunks`` + 1 chunks."""
    frames = chunks = 0
    at = 12
    while at + 8 <= len(data) and chunks <= max_chunks:
        kind, size = struct.unpack_from("<4sI", data, at)
        chunks += 1
        frames += kind == b"ANMF"
        at += 8 + size + size % 2
    return frames, chunks
