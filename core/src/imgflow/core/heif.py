"""Which codec a HEIF file's primary image is coded with, read from its boxes before any decoding.

libvips' "heif-compression" is no answer: it is guessed from the file's major brand, so an HEVC
image in a file branded "avif" (or an AV1 one branded "mif1") is misnamed. The item type of the
primary item (and, for a grid or other derived image, of the items it is made from) is what
libheif picks its decoder by, so that is what is read here. This walks only the ``meta`` box's
``pitm``, ``iinf`` and ``iref`` children, with every count and size checked against the bytes
there are, and is bounded in entries and depth whatever the file says: at most ``MAX_BOXES``
boxes read in any one box, ``MAX_REFERENCES`` references, ``MAX_DEPTH`` levels of derived images,
and each item visited once. A grid may name the same tile many times, and a file may chain grids
that each name the next hundreds of times: a walk that kept the repeats visited 256**4 items for a
2.7 KB file (issue 19).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

# item types of coded images -> the codec's name, as a person would know it
CODECS = {
    "av01": "AV1",
    "hvc1": "HEVC (H.265)",
    "hev1": "HEVC (H.265)",
    "lhv1": "layered HEVC",
    "avc1": "H.264",
    "vvc1": "VVC (H.266)",
    "evc1": "EVC",
    "jpeg": "JPEG",
    "j2k1": "JPEG 2000",
    "unci": "uncompressed",
    "mski": "mask",
}
# images made from other items (tiles, an identity transform, an overlay): their codec is theirs
DERIVED = frozenset({"grid", "iden", "iovl"})
MAX_DEPTH = 4  # derived images of derived images: libheif refuses deeper nesting too
# The shipped libheif refuses more than 100 boxes in a box, and more than 256 reference boxes or
# 256 references in one (its security limits): these are looser, so that they never refuse what
# libheif reads, and still keep the walk to a few milliseconds
MAX_BOXES = 1024
MAX_REFERENCES = 256 * 256


class HeifStructureError(ValueError):
    """The boxes do not say what the primary image is."""


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[str, int, int]]:
    """(type, payload start, box end) of each box in data[start:end], at most ``MAX_BOXES``."""
    for _ in range(MAX_BOXES):
        if start + 8 > end:
            return
        size, kind = struct.unpack_from(">I4s", data, start)
        header = 8
        if size == 1:
            if start + 16 > end:
                raise HeifStructureError("a box's 64-bit size is cut off")
            (size,) = struct.unpack_from(">Q", data, start + 8)
            header = 16
        elif size == 0:
            size = end - start
        if size < header or start + size > end:
            raise HeifStructureError(f"the {kind.decode('latin-1')!r} box overruns its container")
        yield kind.decode("latin-1"), start + header, start + size
        start += size
    if start + 8 <= end:
        raise HeifStructureError(f"a box holds more than {MAX_BOXES} boxes")


def _find(data: bytes, start: int, end: int, kind: str) -> tuple[int, int] | None:
    return next(((s, e) for k, s, e in _boxes(data, start, end) if k == kind), None)


def _uint(data: bytes, offset: int, size: int, end: int) -> int:
    if offset + size > end:
        raise HeifStructureError("a box is shorter than its fields")
    return int.from_bytes(data[offset : offset + size], "big")


def primary_codecs(data: bytes) -> set[str]:
    """The item types the primary image is coded with (several for a grid of mixed tiles)."""
    meta = _find(data, 0, len(data), "meta")
    if meta is None:
        raise HeifStructureError("there is no 'meta' box")
    start, end = meta[0] + 4, meta[1]  # a full box: version and flags first
    pitm = _find(data, start, end, "pitm")
    iinf = _find(data, start, end, "iinf")
    if pitm is None or iinf is None:
        raise HeifStructureError("there is no primary item or no item list")
    primary = _uint(data, pitm[0] + 4, 2 if _uint(data, pitm[0], 1, pitm[1]) == 0 else 4, pitm[1])
    types = _item_types(data, *iinf)
    references = _derived_from(data, *iref) if (iref := _find(data, start, end, "iref")) else {}
    codecs: set[str] = set()
    items, seen = [primary], {primary}
    for _ in range(MAX_DEPTH + 1):
        following = []
        for item in items:
            kind = types.get(item)
            if kind is None:
                raise HeifStructureError(f"item {item} is not in the item list")
            if kind not in DERIVED:
                codecs.add(kind)
                continue
            for source in references.get(item, ()):
                if source not in seen:  # a tile named twice (or a loop) is looked at once
                    seen.add(source)
                    following.append(source)
        if not following:
            if not codecs:
                raise HeifStructureError("the primary image is made from no coded image")
            return codecs
        items = following
    raise HeifStructureError("derived images nest too deeply")


def _item_types(data: bytes, start: int, end: int) -> dict[int, str]:
    count_size = 2 if _uint(data, start, 1, end) == 0 else 4
    start += 4 + count_size  # version and flags, then an entry count the boxes themselves give
    types = {}
    for kind, s, e in _boxes(data, start, end):
        version = _uint(data, s, 1, e)
        if kind != "infe" or version < 2:  # versions 0 and 1 (no item type) are not HEIF's
            continue
        id_size = 2 if version == 2 else 4
        item = _uint(data, s + 4, id_size, e)
        at = s + 4 + id_size + 2  # then the protection index
        types[item] = data[at : at + 4].decode("latin-1") if at + 4 <= e else ""
    return types


def _derived_from(data: bytes, start: int, end: int) -> dict[int, set[int]]:
    """The items each derived item is made from (each named once, however often it is listed)."""
    id_size = 2 if _uint(data, start, 1, end) == 0 else 4
    refs: dict[int, set[int]] = {}
    total = 0
    for kind, s, e in _boxes(data, start + 4, end):
        if kind != "dimg":
            continue
        source = _uint(data, s, id_size, e)
        count = _uint(data, s + id_size, 2, e)
        at = s + id_size + 2
        if at + count * id_size > e:
            raise HeifStructureError("a 'dimg' reference lists more items than it holds")
        total += count
        if total > MAX_REFERENCES:
            raise HeifStructureError(f"the file has more than {MAX_REFERENCES} 'dimg' references")
        refs.setdefault(source, set()).update(
            struct.unpack_from(f">{count}{'H' if id_size == 2 else 'I'}", data, at)
        )
    return refs
