"""Hostile image files, built byte by byte: structures a parser must walk with bounds.

Each file is well-formed enough that libvips' loader claims it (the signature and header are right)
and then asks whoever walks its structure to follow too much: HEIF/AVIF grids that reference the
next grid hundreds of times, reference loops, declared counts and box sizes far beyond the bytes
there are, deep nesting; PNG, GIF, TIFF, WebP and JPEG files made of many small chunks, frames,
directories or segments, compressed bombs, or lengths they do not have. Most are a few KB, the
largest under the 10 MiB upload limit.

``grid_chain(levels=4, references=256)`` is issue 19's finding: a 2.7 KB AVIF whose primary grid
is made of 256 references to a second grid, made of 256 references to a third, and so on; a walk
that does not drop repeated items visits 256**levels tiles.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache

import pyvips


@dataclass(frozen=True)
class Hostile:
    name: str
    data: bytes


# --- HEIF / AVIF ------------------------------------------------------------------------------


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I4s", 8 + len(body), kind) + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", version << 24 | flags), *payload)


@dataclass(frozen=True)
class Tile:
    """A real AV1 image: its coded bytes, its av1C property and its size."""

    data: bytes
    av1c: bytes
    width: int
    height: int


@cache
def av1_tile(side: int = 16) -> Tile:
    """A ``side`` x ``side`` grey AV1 picture, taken out of the AVIF libheif writes for it."""
    image = pyvips.Image.black(side, side, bands=3).new_from_image([128, 128, 128]).cast("uchar")
    avif = bytes(image.copy(interpretation="srgb").heifsave_buffer(compression="av1", effort=0, Q=30))
    at = avif.index(b"av1C") - 4
    (av1c_size,) = struct.unpack_from(">I", avif, at)
    at_mdat = avif.index(b"mdat") - 4
    (mdat_size,) = struct.unpack_from(">I", avif, at_mdat)
    return Tile(avif[at_mdat + 8 : at_mdat + mdat_size], avif[at : at + av1c_size], side, side)


def grid_descriptor(rows: int, columns: int, width: int, height: int) -> bytes:
    """ImageGrid: version 0, 32-bit output size when it does not fit 16 bits."""
    if width < 1 << 16 and height < 1 << 16:
        return struct.pack(">BBBBHH", 0, 0, rows - 1, columns - 1, width, height)
    return struct.pack(">BBBBII", 0, 1, rows - 1, columns - 1, width, height)


@dataclass(frozen=True)
class Item:
    id: int
    type: str  # "av01" (the tile's bytes, from mdat) or a derived type with its data in idat
    references: Sequence[int] = ()  # dimg: the items it is made from, in order
    data: bytes = b""  # a derived item's data (a grid's descriptor)
    width: int = 0
    height: int = 0


def heif_file(
    items: Sequence[Item], primary: int, *, tile: Tile | None = None, extra_meta: bytes = b""
) -> bytes:
    """An AVIF with these items: every av01 item shares one coded tile (one extent in mdat), every
    derived item's data is in idat. ``extra_meta`` goes into meta after the standard boxes."""
    tile = tile or av1_tile()
    idat_data = b"".join(item.data for item in items if item.type != "av01")
    ftyp = box(b"ftyp", b"avif", struct.pack(">I", 0), b"mif1", b"miaf", b"avif")
    hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I", 0), b"pict", bytes(12), b"\0")
    pitm = full_box(b"pitm", 0, 0, struct.pack(">H", primary))
    infes = b"".join(
        # flag 1: hidden, for every item but the primary (tiles are not images of their own)
        full_box(
            b"infe",
            2,
            int(item.id != primary),
            struct.pack(">HH", item.id, 0),
            item.type.encode("latin-1"),
            b"\0",
        )
        for item in items
    )
    iinf = full_box(b"iinf", 0, 0, struct.pack(">H", len(items)), infes)
    dimgs = b"".join(
        box(
            b"dimg",
            struct.pack(">HH", item.id, len(item.references)),
            *(struct.pack(">H", r) for r in item.references),
        )
        for item in items
        if item.references
    )
    iref = full_box(b"iref", 0, 0, dimgs) if dimgs else b""
    # properties: 1 av1C, 2 the tile's ispe, then an ispe per size a derived item declares
    properties = [tile.av1c, full_box(b"ispe", 0, 0, struct.pack(">II", tile.width, tile.height))]
    associations = []
    for item in items:
        if item.type == "av01":
            associations.append(struct.pack(">HBBB", item.id, 2, 0x81, 0x02))
            continue
        ispe = full_box(b"ispe", 0, 0, struct.pack(">II", item.width, item.height))
        if ispe not in properties:
            properties.append(ispe)
        associations.append(struct.pack(">HBB", item.id, 1, properties.index(ispe) + 1))
    ipco = box(b"ipco", *properties)
    ipma = full_box(b"ipma", 0, 0, struct.pack(">I", len(items)), *associations)
    iprp = box(b"iprp", ipco, ipma)
    idat = box(b"idat", idat_data) if idat_data else b""

    def meta(mdat_offset: int) -> bytes:
        # iloc version 1: offset 4, length 4, base offset 0, construction method per item
        entries, idat_at = [], 0
        for item in items:
            if item.type == "av01":
                method, offset, length = 0, mdat_offset, len(tile.data)
            else:
                method, offset, length = 1, idat_at, len(item.data)
                idat_at += len(item.data)
            entries.append(struct.pack(">HHHHII", item.id, method, 0, 1, offset, length))
        iloc = full_box(b"iloc", 1, 0, struct.pack(">BBH", 0x44, 0x00, len(items)), *entries)
        return full_box(b"meta", 0, 0, hdlr, pitm, iloc, iinf, iref, iprp, idat, extra_meta)

    mdat_offset = len(ftyp) + len(meta(0)) + 8
    return ftyp + meta(mdat_offset) + box(b"mdat", tile.data)


def grid_item(item_id: int, references: Sequence[int], rows: int, columns: int, side: int) -> Item:
    return Item(item_id, "grid", references, grid_descriptor(rows, columns, side, side), side, side)


def grid_chain(levels: int = 4, references: int = 256) -> bytes:
    """Issue 19: grid 1 is ``references`` copies of grid 2, which is as many copies of grid 3...
    down to one AV1 tile. Each grid declares the size of one tile, so the pixel limits pass."""
    tile = av1_tile()
    rows = max(1, int(references**0.5))
    columns = references // rows
    grids = [
        grid_item(level + 1, [level + 2] * references, rows, columns, tile.width) for level in range(levels)
    ]
    return heif_file([*grids, Item(levels + 1, "av01")], primary=1, tile=tile)


def grid_graph(references: Sequence[Sequence[int]]) -> bytes:
    """Grids 1..n, grid i made of the items ``references[i - 1]`` (any of the grids, loops
    included, or the one AV1 tile, n + 1), each declaring one row of tiles of the tile's size."""
    side = av1_tile().width
    grids = [grid_item(i, refs, 1, len(refs), side) for i, refs in enumerate(references, 1)]
    return heif_file([*grids, Item(len(references) + 1, "av01")], primary=1)


def plain_avif() -> bytes:
    """One AV1 tile and nothing else: the normal case of this builder."""
    return heif_file([Item(1, "av01")], primary=1)


def plain_grid() -> bytes:
    """A 2x2 grid of one tile: a well-formed grid."""
    tile = av1_tile()
    return heif_file([grid_item(1, [2] * 4, 2, 2, 2 * tile.width), Item(2, "av01")], primary=1, tile=tile)


def grid_loop() -> bytes:
    """Grid 1 is made of grid 2, which is made of grid 1 (and of itself)."""
    return heif_file(
        [grid_item(1, [2, 3], 1, 2, 32), grid_item(2, [1, 2], 1, 2, 32), Item(3, "av01")], primary=1
    )


def self_reference() -> bytes:
    return heif_file([grid_item(1, [1, 2], 1, 2, 32), Item(2, "av01")], primary=1)


def deep_nesting(depth: int = 2000) -> bytes:
    """A chain of ``depth`` distinct grids, each made of the next, one AV1 tile at the bottom."""
    side = av1_tile().width
    grids = [grid_item(i, [i + 1], 1, 1, side) for i in range(1, depth + 1)]
    return heif_file([*grids, Item(depth + 1, "av01")], primary=1)


def wide_fan(count: int = 30_000) -> bytes:
    """A grid declaring one tile but referencing ``count`` distinct AV1 items."""
    side = av1_tile().width
    tiles = [Item(i, "av01") for i in range(2, count + 2)]
    return heif_file([grid_item(1, [t.id for t in tiles], 1, 1, side), *tiles], primary=1)


def many_references(count: int = 65_535) -> bytes:
    """One grid referencing the same tile 65,535 times (the most a dimg box can count)."""
    side = av1_tile().width
    return heif_file([grid_item(1, [2] * count, 1, 1, side), Item(2, "av01")], primary=1)


def many_dimg_boxes(count: int = 40_000) -> bytes:
    """The primary grid's references spread over ``count`` dimg boxes of one reference each."""
    plain = plain_grid()
    extra = b"".join(box(b"dimg", struct.pack(">HHH", 1, 1, 2)) for _ in range(count))
    at = plain.index(b"iref") - 4
    (size,) = struct.unpack_from(">I", plain, at)
    bigger = struct.pack(">I", size + len(extra)) + plain[at + 4 : at + size] + extra
    return _grow_meta(plain[:at] + bigger + plain[at + size :], len(extra))


def _grow_meta(data: bytes, by: int) -> bytes:
    """The file with its meta box ``by`` bytes longer (after content was spliced into it) and the
    tile's mdat offset in iloc moved along."""
    at = data.index(b"meta") - 4
    (size,) = struct.unpack_from(">I", data, at)
    data = data[:at] + struct.pack(">I", size + by) + data[at + 4 :]
    return _move_mdat_offsets(data, by)


def _move_mdat_offsets(data: bytes, by: int) -> bytes:
    at = data.index(b"iloc") + 8
    count = struct.unpack_from(">H", data, at + 2)[0]
    out = bytearray(data)
    entry = at + 4
    for _ in range(count):
        method = struct.unpack_from(">H", data, entry + 2)[0]
        if method == 0:
            (offset,) = struct.unpack_from(">I", data, entry + 8)
            struct.pack_into(">I", out, entry + 8, offset + by)
        entry += 16
    return bytes(out)


def many_items(count: int = 60_000) -> bytes:
    """``count`` AV1 items listed, only the first used."""
    return heif_file([Item(i, "av01") for i in range(1, count + 1)], primary=1)


def huge_declared_counts() -> bytes:
    """An item list declaring 4 billion entries and a dimg box declaring 65,535 references, each
    holding one."""
    data = plain_grid()
    at = data.index(b"iinf") + 8
    data = data[:at] + struct.pack(">H", 0xFFFF) + data[at + 2 :]
    at = data.index(b"dimg") + 6
    return data[:at] + struct.pack(">H", 0xFFFF) + data[at + 2 :]


def huge_box_sizes() -> bytes:
    """A meta box holding a box whose 64-bit size says 2**63 bytes."""
    return heif_file([Item(1, "av01")], primary=1, extra_meta=struct.pack(">I4sQ", 1, b"free", 1 << 63))


def many_boxes(count: int = 100_000) -> bytes:
    """``count`` empty free boxes inside meta before the ones that matter."""
    frees = struct.pack(">I4s", 8, b"free") * count
    plain = plain_avif()
    at = plain.index(b"hdlr") - 4
    return _grow_meta(plain[:at] + frees + plain[at:], len(frees))


HEIF: dict[str, Callable[[], bytes]] = {
    "heif-grid-chain-3": lambda: grid_chain(3),
    "heif-grid-chain-4": grid_chain,
    "heif-grid-loop": grid_loop,
    "heif-self-reference": self_reference,
    "heif-deep-nesting": deep_nesting,
    "heif-wide-fan": wide_fan,
    "heif-many-references": many_references,
    "heif-many-dimg-boxes": many_dimg_boxes,
    "heif-many-items": many_items,
    "heif-huge-declared-counts": huge_declared_counts,
    "heif-huge-box-sizes": huge_box_sizes,
    "heif-many-boxes": many_boxes,
}


# --- PNG ----------------------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes, *, length: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data)
    return struct.pack(">I", len(data) if length is None else length) + kind + data + struct.pack(">I", crc)


def png(*middle: bytes, width: int = 1, height: int = 1) -> bytes:
    """A grey 8-bit PNG declaring ``width`` x ``height``, with ``middle`` chunks between IHDR and
    IDAT; its data is one row (1x1 is whole)."""
    ihdr = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    idat = png_chunk(b"IDAT", zlib.compress(b"\0" + bytes(width)))  # one row, whatever the height
    return b"\x89PNG\r\n\x1a\n" + ihdr + b"".join(middle) + idat + png_chunk(b"IEND", b"")


@cache
def zlib_bomb(size: int) -> bytes:
    """``size`` zero bytes, deflated (about a thousandth of that)."""
    return zlib.compress(bytes(size), 9)


PNG: dict[str, Callable[[], bytes]] = {
    "png-many-chunks": lambda: png(png_chunk(b"prVt", b"") * 200_000),
    "png-many-text-chunks": lambda: png(png_chunk(b"tEXt", b"k\0v") * 100_000),
    "png-huge-chunk-length": lambda: png(png_chunk(b"prVt", b"x" * 16, length=0x7FFFFFFF)),
    "png-iccp-bomb": lambda: png(png_chunk(b"iCCP", b"icc\0\0" + zlib_bomb(200_000_000))),
    "png-ztxt-bomb": lambda: png(png_chunk(b"zTXt", b"Comment\0\0" + zlib_bomb(200_000_000))),
    "png-itxt-bomb": lambda: png(png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\1\0\0\0" + zlib_bomb(200_000_000))),
    "png-exif-loop": lambda: png(png_chunk(b"eXIf", exif_loop())),
    "png-huge-declared-size": lambda: png(width=1, height=999_999),  # libpng takes up to 1,000,000
}


# --- GIF ----------------------------------------------------------------------------------------


def gif(*blocks: bytes, width: int = 1, height: int = 1) -> bytes:
    """A GIF89a with a two-colour global palette and ``blocks`` after it."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    return header + b"".join(blocks) + b";"


def gif_frame(delay: int = 1) -> bytes:
    """A graphic control extension and one 1x1 image (LZW code size 2: clear, 0, end)."""
    control = b"!\xf9\x04\x00" + struct.pack("<H", delay) + b"\x00\x00"
    return control + b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"


GIF: dict[str, Callable[[], bytes]] = {
    "gif-many-frames": lambda: gif(gif_frame() * 100_000),
    "gif-many-extensions": lambda: gif(b"!\xfe\x01x\x00" * 200_000, gif_frame()),
    "gif-long-extension": lambda: gif(  # one application extension of 8,000 full sub-blocks
        b"!\xff\x0bNETSCAPE2.0" + (b"\xff" + bytes(255)) * 8_000 + b"\x00", gif_frame()
    ),
    "gif-huge-screen": lambda: gif(gif_frame(), width=65535, height=65535),
}


# --- TIFF ---------------------------------------------------------------------------------------


def tiff_ifd(entries: Sequence[tuple[int, int, int, int]], next_ifd: int) -> bytes:
    """A little-endian IFD: (tag, type, count, value) entries and the offset of the next one."""
    body = b"".join(struct.pack("<HHII", *entry) for entry in sorted(entries))
    return struct.pack("<H", len(entries)) + body + struct.pack("<I", next_ifd)


def tiff_page(next_ifd: int, pixel_at: int) -> bytes:
    """The IFD of a 1x1 8-bit grey uncompressed page whose one pixel is at ``pixel_at``."""
    return tiff_ifd(
        [
            (256, 3, 1, 1),
            (257, 3, 1, 1),
            (258, 3, 1, 8),
            (259, 3, 1, 1),
            (262, 3, 1, 1),
            (273, 4, 1, pixel_at),
            (277, 3, 1, 1),
            (278, 3, 1, 1),
            (279, 4, 1, 1),
        ],
        next_ifd,
    )


TIFF_PAGE_SIZE = len(tiff_page(0, 0))


def tiff_chain(pages: int, *, loop_to: int | None = None) -> bytes:
    """``pages`` IFDs one after the other from offset 8, the last pointing to ``loop_to`` (or 0)."""
    out = [b"II*\0" + struct.pack("<I", 8)]
    pixel_at = 8 + pages * TIFF_PAGE_SIZE
    for page in range(pages):
        last = page == pages - 1
        following = (loop_to or 0) if last else 8 + (page + 1) * TIFF_PAGE_SIZE
        out.append(tiff_page(following, pixel_at))
    return b"".join(out) + b"\x80"


def tiff_huge_count() -> bytes:
    """An IFD declaring 65,535 entries, holding one page's worth."""
    data = bytearray(tiff_chain(1))
    struct.pack_into("<H", data, 8, 0xFFFF)
    return bytes(data)


def tiff_huge_strip_count() -> bytes:
    """A 1x1 page declaring a billion strips, their offsets and byte counts where the IFD is."""
    strips = [(273, 4, 0x3FFFFFFF, 8), (279, 4, 0x3FFFFFFF, 8)]
    tags = [(256, 3, 1, 1), (257, 3, 1, 1), (258, 3, 1, 8), (262, 3, 1, 1), (278, 3, 1, 1)]
    return b"II*\0" + struct.pack("<I", 8) + tiff_ifd(tags + strips, 0)


TIFF: dict[str, Callable[[], bytes]] = {
    "tiff-ifd-self-loop": lambda: tiff_chain(1, loop_to=8),
    "tiff-ifd-long-loop": lambda: tiff_chain(5_000, loop_to=8),
    "tiff-many-ifds": lambda: tiff_chain(50_000),
    "tiff-huge-ifd-count": tiff_huge_count,
    "tiff-huge-strip-count": tiff_huge_strip_count,
}


# --- WebP ---------------------------------------------------------------------------------------


def riff_chunk(kind: bytes, data: bytes, *, length: int | None = None) -> bytes:
    pad = b"\0" if len(data) % 2 else b""
    return struct.pack("<4sI", kind, len(data) if length is None else length) + data + pad


def webp(*chunks: bytes) -> bytes:
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


@cache
def vp8l_1x1() -> bytes:
    """The VP8L chunk of a lossless 1x1 WebP, as libwebp writes it."""
    data = bytes(pyvips.Image.black(1, 1, bands=3).cast("uchar").webpsave_buffer(lossless=True))
    at = data.index(b"VP8L")
    (size,) = struct.unpack_from("<I", data, at + 4)
    return data[at : at + 8 + size + size % 2]


def vp8x(*, animation: bool = False, exif: bool = False, width: int = 1, height: int = 1) -> bytes:
    flags = (0x02 if animation else 0) | (0x08 if exif else 0)
    size = struct.pack("<I", width - 1)[:3] + struct.pack("<I", height - 1)[:3]
    return riff_chunk(b"VP8X", bytes([flags, 0, 0, 0]) + size)


def anmf(frame: bytes) -> bytes:
    return riff_chunk(b"ANMF", bytes(6) + b"\0\0\0\0\0\0" + b"\x01\0\0\0" + frame)


def webp_frames(count: int) -> bytes:
    """An animated WebP of ``count`` 1x1 frames."""
    return webp(vp8x(animation=True), riff_chunk(b"ANIM", bytes(6)), anmf(vp8l_1x1()) * count)


WEBP: dict[str, Callable[[], bytes]] = {
    "webp-many-chunks": lambda: webp(vp8x(), riff_chunk(b"prVt", b"") * 200_000, vp8l_1x1()),
    "webp-many-frames": lambda: webp_frames(50_000),
    "webp-huge-chunk-length": lambda: webp(
        vp8x(), riff_chunk(b"prVt", b"x" * 16, length=0xFFFFFFF0), vp8l_1x1()
    ),
    "webp-exif-loop": lambda: webp(vp8x(exif=True), vp8l_1x1(), riff_chunk(b"EXIF", exif_loop())),
    "webp-huge-canvas": lambda: webp(
        vp8x(animation=True, width=1 << 24, height=1 << 24), riff_chunk(b"ANIM", bytes(6)), anmf(vp8l_1x1())
    ),
}


# --- JPEG, and EXIF -----------------------------------------------------------------------------


def exif_loop(entries: int = 2_000) -> bytes:
    """EXIF whose IFD0 has ``entries`` entries, an Exif IFD pointer to itself, and a next-IFD
    offset to itself: a walker without a seen-set goes round for ever."""
    tags = [(0x8769, 4, 1, 8)] + [(0x9000 + i, 4, 1, i) for i in range(1, entries)]
    body = b"".join(struct.pack("<HHII", *tag) for tag in sorted(tags))
    return b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(tags)) + body + struct.pack("<I", 8)


@cache
def jpeg_1x1() -> bytes:
    return bytes(pyvips.Image.black(1, 1).cast("uchar").jpegsave_buffer(strip=True))


def jpeg(*segments: bytes) -> bytes:
    """The 1x1 JPEG with ``segments`` right after its SOI marker."""
    base = jpeg_1x1()
    return base[:2] + b"".join(segments) + base[2:]


def jpeg_segment(marker: int, data: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(data) + 2) + data


def icc_chunks(count: int) -> bytes:
    """An ICC profile split over ``count`` APP2 segments of 60 KB each."""
    part = bytes(60_000)
    return b"".join(jpeg_segment(0xE2, b"ICC_PROFILE\0" + bytes([i + 1, count]) + part) for i in range(count))


JPEG: dict[str, Callable[[], bytes]] = {
    "jpeg-many-app-segments": lambda: jpeg(jpeg_segment(0xE5, b"x") * 200_000),
    "jpeg-many-exif-segments": lambda: jpeg(jpeg_segment(0xE1, b"Exif\0\0" + exif_loop(10)) * 20_000),
    "jpeg-exif-loop": lambda: jpeg(jpeg_segment(0xE1, b"Exif\0\0" + exif_loop())),
    "jpeg-icc-in-many-chunks": lambda: jpeg(icc_chunks(150)),
    "jpeg-many-comments": lambda: jpeg(jpeg_segment(0xFE, bytes(65_000)) * 150),
}

BUILDERS: dict[str, Callable[[], bytes]] = {**HEIF, **PNG, **GIF, **TIFF, **WEBP, **JPEG}


def all_files() -> Iterator[Hostile]:
    for name, make in BUILDERS.items():
        yield Hostile(name, make())
