"""The worker's processing steps on real images of every accepted kind (libvips, no servers)."""

from __future__ import annotations

import pytest
import pyvips

from imgflow.core.outputs import Fit, OutputFormat, ThumbnailSpec
from imgflow.core.probe import ImageTooLarge, UnsupportedImage, probe_buffer, restrict_loaders
from imgflow.harness import images
from imgflow.worker.pipeline import Thumbnail, make_thumbnail
from imgflow.worker.steps.crop import crop
from imgflow.worker.steps.load import jpeg_shrink, open_source, reduction
from imgflow.worker.steps.resize import resize
from imgflow.worker.work import Work

LIMIT = 50_000_000
SIDE = 16_384


def thumb(data: bytes, **spec: object) -> Thumbnail:
    return make_thumbnail(
        data, ThumbnailSpec.model_validate(spec), max_pixels=LIMIT, max_side=SIDE, quality=85
    )


def decode(t: Thumbnail) -> pyvips.Image:
    return pyvips.Image.new_from_buffer(t.data, "")


@pytest.mark.parametrize("kind", sorted(images.VALID))
def test_every_kind_becomes_a_100x100_srgb_jpeg_by_default(kind: str) -> None:
    make, _ = images.VALID[kind]
    t = thumb(make())
    out = decode(t)
    assert (t.width, t.height) == (100, 100) == (out.width, out.height)
    assert out.get("vips-loader") == "jpegload_buffer"
    assert out.bands == 3 and out.interpretation == "srgb" and out.format == "uchar"


@pytest.mark.parametrize("kind", sorted(images.VALID))
def test_probe_reads_the_format_from_the_bytes(kind: str) -> None:
    make, fmt = images.VALID[kind]
    assert probe_buffer(make(), max_pixels=LIMIT, max_side=SIDE).format == fmt


@pytest.mark.parametrize(
    ("fit", "expected"),
    [(Fit.cover, (120, 80)), (Fit.contain, (120, 80)), (Fit.fill, (120, 80)), (Fit.inside, (107, 80))],
)
def test_fits_give_the_sizes_their_names_promise(fit: Fit, expected: tuple[int, int]) -> None:
    t = thumb(images.jpeg(640, 480), width=120, height=80, fit=fit)
    assert (t.width, t.height) == expected


def test_contain_pads_jpeg_white_and_png_transparent() -> None:
    wide = images.jpeg(400, 100)
    jpeg_out = decode(thumb(wide, width=100, height=100, fit="contain"))
    assert jpeg_out.getpoint(50, 2) == pytest.approx([255, 255, 255], abs=2)  # padding above
    png_out = decode(thumb(wide, width=100, height=100, fit="contain", format="png"))
    assert png_out.bands == 4
    assert png_out.getpoint(50, 2)[3] == 0  # transparent padding
    assert png_out.getpoint(50, 50)[3] == 255  # opaque picture


def test_alpha_is_kept_for_png_and_webp_and_flattened_onto_white_for_jpeg() -> None:
    source = images.png_alpha(320, 240)  # alpha rises from 0 at the left to 255 at the right
    for fmt in ("png", "webp"):
        out = decode(thumb(source, width=64, height=48, format=fmt))
        assert out.hasalpha(), fmt
        assert out.getpoint(0, 24)[3] < 20 and out.getpoint(63, 24)[3] > 235, fmt
    flat = decode(thumb(source, width=64, height=48))
    assert flat.bands == 3
    assert min(flat.getpoint(0, 24)) > 230  # nearly transparent pixels became nearly white


def test_exif_orientation_is_applied_and_then_dropped() -> None:
    # Stored 400x200, left half red, right half blue; orientation 6 = turn 90 degrees clockwise,
    # so upright it is 200x400 with red on top and blue at the bottom.
    out = decode(thumb(images.exif_rotated(400, 200, 6), width=50, height=100, fit="fill"))
    assert (out.width, out.height) == (50, 100)
    red, blue = out.getpoint(25, 10), out.getpoint(25, 90)
    assert red[0] > 200 and red[2] < 60, red
    assert blue[2] > 200 and blue[0] < 60, blue
    assert not out.get_typeof("exif-data") and not out.get_typeof("orientation")


def test_cmyk_becomes_srgb_with_the_same_colour() -> None:
    out = decode(thumb(images.cmyk_jpeg(), width=40, height=40))
    assert out.interpretation == "srgb" and out.bands == 3
    r, g, b = out.getpoint(20, 20)
    assert r > 190 and 80 < g < 160 and b < 80, (r, g, b)  # still orange, within profile round-trip


def test_sixteen_bit_png_becomes_eight_bit() -> None:
    out = decode(thumb(images.png_16bit(), format="png"))
    assert out.format == "uchar"


def test_metadata_is_stripped() -> None:
    source = pyvips.Image.new_from_buffer(images.jpeg(300, 200), "").copy()
    source.set_type(pyvips.GValue.gstr_type, "exif-ifd0-Artist", "someone private")
    data = bytes(source.jpegsave_buffer())
    for fmt in ("jpeg", "png", "webp"):
        out = decode(thumb(data, format=fmt))
        assert not out.get_typeof("exif-data"), fmt
        assert not out.get_typeof("xmp-data"), fmt
        assert not out.get_typeof("icc-profile-data"), fmt


def test_animated_gif_gives_its_first_frame() -> None:
    t = thumb(images.animated_gif(), width=32, height=24, format="png")
    assert (t.width, t.height) == (32, 24)
    assert decode(t).get("n-pages") == 1 if decode(t).get_typeof("n-pages") else True


def test_output_formats_are_what_was_asked() -> None:
    loaders = {
        "jpeg": "jpegload_buffer",
        "png": "pngload_buffer",
        "webp": "webpload_buffer",
        "gif": "gifload_buffer",
    }
    for fmt in OutputFormat:
        data = thumb(images.jpeg(), format=fmt.value).data
        if (
            fmt is OutputFormat.avif
        ):  # not an accepted input: its loader is blocked here (tests/test_formats.py)
            assert data[4:12] == b"ftypavif"
        else:
            assert pyvips.Image.new_from_buffer(data, "").get("vips-loader") == loaders[fmt.value]


def test_a_truncated_jpeg_fails_with_a_readable_error() -> None:
    with pytest.raises(pyvips.Error) as caught:
        thumb(images.truncated_jpeg())
    assert "premature" in str(caught.value).lower() or "truncat" in str(caught.value).lower()


def test_pixel_bombs_are_refused_from_the_header() -> None:
    with pytest.raises(ImageTooLarge, match="3,600,000,000 pixels"):
        thumb(images.png_bomb())


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect/></svg>'),
        ("ppm", b"P6\n2 2\n255\n" + b"\x00" * 12),
        ("csv", b"1,2,3\n4,5,6\n"),
        ("matrix", b"2 2\n1 2\n3 4\n"),
        ("pdf", b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF"),
        ("bmp", b"BM" + b"\x00" * 60),
        ("text", b"this is not an image, whatever its name says"),
        ("empty", b""),
    ],
)
def test_untrusted_or_unknown_formats_never_reach_a_loader(name: str, data: bytes) -> None:
    restrict_loaders()
    with pytest.raises(UnsupportedImage):
        probe_buffer(data, max_pixels=LIMIT, max_side=SIDE)
    # libvips itself refuses them too: the loaders are blocked process-wide, not just skipped by us
    if name in ("ppm", "csv", "matrix", "svg"):
        with pytest.raises(pyvips.Error):
            pyvips.Image.new_from_buffer(data, "")


@pytest.mark.parametrize(
    ("size", "box", "fit", "expected"),
    [
        ((4000, 3000), (100, 100), Fit.cover, 8),  # 12 MP to 100 px: decode at 1/8
        ((1920, 1080), (100, 100), Fit.cover, 8),  # 10.8x: 1/8 leaves 240x135, still over the box
        ((1920, 1080), (300, 300), Fit.cover, 2),  # 3.6x
        ((640, 480), (100, 100), Fit.cover, 4),  # 4.8x
        ((300, 200), (100, 100), Fit.cover, 2),
        ((150, 150), (100, 100), Fit.cover, 1),  # less than 2x: a shrink would go under the box
        ((4000, 100), (100, 100), Fit.inside, 8),  # inside: the more-reduced axis decides
        ((4000, 100), (100, 100), Fit.cover, 1),
    ],
)
def test_jpeg_shrink_on_load_never_goes_below_the_box(
    size: tuple[int, int], box: tuple[int, int], fit: Fit, expected: int
) -> None:
    assert jpeg_shrink(reduction(*size, box, fit)) == expected


def test_cover_crops_to_the_box_shape_before_resampling() -> None:
    info = probe_buffer(images.jpeg(640, 480), max_pixels=LIMIT, max_side=SIDE)
    spec = ThumbnailSpec(width=100, height=100)
    work = Work(open_source(images.jpeg(640, 480), info, [spec]), spec)
    assert (work.image.width, work.image.height) == (160, 120)  # 1/4 on load
    cropped = crop(work)
    assert (cropped.image.width, cropped.image.height) == (120, 120)
    assert (resize(cropped).image.width, resize(cropped).image.height) == (100, 100)


def test_webp_decodes_straight_to_the_box() -> None:
    data = images.webp(400, 300)
    info = probe_buffer(data, max_pixels=LIMIT, max_side=SIDE)
    image = open_source(data, info, [ThumbnailSpec(width=100, height=100)])
    assert min(image.width, image.height) == 100


def test_cover_ends_exactly_at_the_box_for_any_shape() -> None:
    for width in range(1, 400, 7):
        for height in (1, 3, 99, 101, 333):
            image = pyvips.Image.black(width, height, bands=3)
            spec = ThumbnailSpec(width=100, height=100)
            work = resize(crop(Work(image=image, spec=spec)))
            assert (work.image.width, work.image.height) == (100, 100), (width, height)
