"""AVIF (AV1 in HEIF) as input, through the real API and worker: what is accepted, what is refused at
the door and why, and that the thumbnail is the picture, upright once.

The AVIF sources are made here with libvips' heifsave (libheif + libaom) and Pillow's AVIF plugin
(libavif). The shipped libheif cannot encode HEVC, so the one HEVC file, tests/data/hevc.heic (64x48,
733 bytes), was made with Debian bookworm's heif-enc (libheif 1.15.1, x265 3.5): ``heif-enc -q 50``.
"""

from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import pyvips
from PIL import Image

from imgflow.core.probe import UndecodableImage, probe_buffer, restrict_loaders
from imgflow.harness.client import submit, wait_finished
from tests.conftest import Stack
from tests.test_bad_input import check

HEVC_HEIC = (Path(__file__).parent / "data" / "hevc.heic").read_bytes()
RED, BLUE = (230, 30, 30), (30, 30, 230)


def picture(width: int, height: int, square: int) -> pyvips.Image:
    """Blue, with a red square of side ``square`` in the top-left corner."""
    blue = pyvips.Image.black(width, height).new_from_image(list(BLUE)).cast("uchar")
    red = pyvips.Image.black(square, square).new_from_image(list(RED)).cast("uchar")
    return blue.insert(red, 0, 0).copy(interpretation="srgb")


def avif(image: pyvips.Image) -> bytes:
    return bytes(image.heifsave_buffer(compression="av1", effort=2, Q=80))


def with_ispe(data: bytes, width: int, height: int) -> bytes:
    """The file with its image-size property (what the header declares) set to width x height."""
    at = data.index(b"ispe") + 8  # after the box type, version and flags
    return data[:at] + struct.pack(">II", width, height) + data[at + 8 :]


def with_brand(data: bytes, brand: bytes) -> bytes:
    assert data[4:8] == b"ftyp"
    return data[:8] + brand + data[12:]


async def thumbnail_of(stack: Stack, data: bytes, **fields: str) -> tuple[dict[str, object], pyvips.Image]:
    reply = await submit(stack.client, data, filename="photo.avif", content_type="image/avif", **fields)
    assert reply.status_code == 202, reply.text
    job = await wait_finished(stack.client, reply.json()["jobId"])
    assert job["status"] == "completed", job
    served = await stack.client.get(job["result"]["thumbnailUrl"])
    assert served.status_code == 200
    return job, pyvips.Image.new_from_buffer(served.content, "")


def colour_at(image: pyvips.Image, x: int, y: int) -> tuple[int, ...]:
    return tuple(round(v) for v in image(x, y)[:3])


def near(colour: tuple[int, ...], expected: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 40 for a, b in zip(colour, expected, strict=True))


async def test_an_avif_upload_becomes_the_thumbnail_of_its_picture(stack: Stack) -> None:
    # 800x600 with a red 200x200 square top-left; cover 200x150 scales by 4: the square is 50x50
    job, thumb = await thumbnail_of(
        stack, avif(picture(800, 600, 200)), width="200", height="150", format="png"
    )
    assert (thumb.width, thumb.height) == (200, 150)
    assert job["result"]["width"] == 200 and job["result"]["height"] == 150  # type: ignore[index]
    assert near(colour_at(thumb, 20, 20), RED)
    assert near(colour_at(thumb, 80, 20), BLUE) and near(colour_at(thumb, 20, 80), BLUE)
    assert near(colour_at(thumb, 180, 130), BLUE)


async def test_a_rotated_avif_comes_out_upright_and_turned_once(stack: Stack) -> None:
    """Pillow writes EXIF orientation 6 as an irot box and keeps the EXIF tag too: the picture
    must be turned by the box (libheif) and not a second time by the tag."""
    stored = picture(240, 120, 60)  # as stored: landscape, red top-left
    pil = Image.frombytes("RGB", (stored.width, stored.height), stored.write_to_memory())
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise to display"
    out = io.BytesIO()
    pil.save(out, "AVIF", exif=exif.tobytes(), quality=90)
    assert b"irot" in out.getvalue()
    _, thumb = await thumbnail_of(
        stack, out.getvalue(), width="100", height="200", fit="inside", format="png"
    )
    # displayed: portrait 120x240, the red square now top-right
    assert (thumb.width, thumb.height) == (100, 200)
    assert near(colour_at(thumb, 90, 10), RED)
    assert near(colour_at(thumb, 10, 10), BLUE) and near(colour_at(thumb, 90, 190), BLUE)


async def test_a_multi_image_heif_is_thumbnailed_by_its_primary_image(stack: Stack) -> None:
    pages = [pyvips.Image.black(64, 48).new_from_image(c).cast("uchar") for c in (RED, (30, 200, 30), BLUE)]
    strip = pyvips.Image.arrayjoin(pages, across=1).copy(interpretation="srgb")
    strip.set_type(pyvips.GValue.gint_type, "page-height", 48)
    data = avif(strip)
    # make the second top-level image (green) the primary one
    images = [
        int.from_bytes(m.group(1), "big") for m in re.finditer(rb"infe\x02\x00\x00\x00(..)\x00\x00av01", data)
    ]
    at = data.index(b"pitm") + 8
    data = data[:at] + struct.pack(">H", images[1]) + data[at + 2 :]
    assert probe_buffer(data, max_pixels=10**6, max_side=1000).pages == 3
    _, thumb = await thumbnail_of(stack, data, width="32", height="24", format="png")
    assert near(colour_at(thumb, 16, 12), (30, 200, 30))


async def test_an_avif_declaring_too_many_pixels_is_refused_before_decoding(stack: Stack) -> None:
    # 20000x20000 in the header, a 64x48 picture in the data: decoding would fail, not refuse
    bomb = with_ispe(avif(picture(64, 48, 10)), 20_000, 20_000)
    user = f"bomb-{uuid.uuid4().hex[:8]}"
    reply = await submit(stack.client, bomb, user_id=user, filename="x.avif", content_type="image/avif")
    check(reply, 422, "20000x20000", "over the limit")
    assert (await stack.client.get(f"/api/image-processing/users/{user}/jobs")).json() == {"jobs": []}


async def test_a_truncated_avif_is_refused_saying_so(stack: Stack) -> None:
    data = avif(picture(400, 300, 100))
    reply = await submit(stack.client, data[: len(data) - 100], filename="x.avif", content_type="image/avif")
    check(reply, 422, "HEIF/AVIF", "truncated or damaged", "end of file")


async def test_a_corrupt_av1_stream_fails_its_job_with_the_decoders_reason(stack: Stack) -> None:
    data = bytearray(avif(picture(400, 300, 100)))
    for i in range(data.index(b"mdat") + 40, len(data)):
        data[i] ^= 0x5A
    reply = await submit(stack.client, bytes(data), filename="x.avif", content_type="image/avif")
    assert reply.status_code == 202, reply.text  # the header is sound: accepted
    job = await wait_finished(stack.client, reply.json()["jobId"])
    assert job["status"] == "failed" and "could not be decoded" in job["error"], job


async def test_hevc_heic_is_refused_at_the_door_naming_the_codec(stack: Stack) -> None:
    for data in (HEVC_HEIC, with_brand(HEVC_HEIC, b"avif")):  # the brand is no proof of the codec
        reply = await submit(stack.client, data, filename="IMG_0001.heic", content_type="image/heic")
        check(reply, 422, "HEVC", "AV1", "no decoder")


def test_the_shipped_libheif_cannot_decode_hevc_which_is_why_it_is_refused() -> None:
    """If this fails, the wheel gained an HEVC decoder: HEIF_DECODABLE may grow."""
    restrict_loaders()  # as in the API and the worker: the heif loader is one of ours
    image = pyvips.Image.new_from_buffer(HEVC_HEIC, "")  # the header reads
    with pytest.raises(pyvips.Error, match="HEVC"):
        image.avg()
    with pytest.raises(UndecodableImage, match="HEVC"):  # and the worker's probe refuses it too
        probe_buffer(HEVC_HEIC, max_pixels=10**6, max_side=1000)


def test_av1_in_a_file_branded_mif1_is_accepted() -> None:
    data = with_brand(avif(picture(64, 48, 10)), b"mif1")
    info = probe_buffer(data, max_pixels=10**6, max_side=1000)
    assert (info.format, info.width, info.height) == ("avif", 64, 48)


async def test_bmp_is_refused_saying_why(stack: Stack) -> None:
    out = io.BytesIO()
    Image.new("RGB", (32, 32), RED).save(out, "BMP")
    reply = await submit(stack.client, out.getvalue(), filename="old.bmp", content_type="image/bmp")
    check(reply, 415, "BMP", "ImageMagick", "untrusted")


# One AVIF job in a fresh process (the worker's libvips settings, two malloc arenas): its peak
# memory must stay under the estimate the worker's budget charges for it.
MEASURE = r"""
import ctypes, json, sys
from imgflow.core.outputs import ThumbnailSpec
from imgflow.core.probe import configure_libvips, probe_buffer
from imgflow.worker.memory import job_memory_bytes
from imgflow.worker.pipeline import make_thumbnail
ctypes.CDLL("libc.so.6").mallopt(-8, 2)
configure_libvips()
data = open(sys.argv[1], "rb").read()
info = probe_buffer(data, max_pixels=50_000_000, max_side=16_384)
spec = ThumbnailSpec(width=400, height=300)
def hwm():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
before = hwm()
make_thumbnail(data, spec, max_pixels=50_000_000, max_side=16_384, quality=85, info=info)
print(json.dumps({"peak": hwm() - before, "estimate": job_memory_bytes(info, [spec], len(data), quality=85)}))
"""


@pytest.mark.parametrize(("bits", "alpha"), [(8, False), (12, True)], ids=["8-bit-rgb", "12-bit-rgba"])
def test_an_avif_jobs_memory_stays_under_its_estimate(tmp_path: Path, bits: int, alpha: bool) -> None:
    width, height = 4000, 3000
    base = pyvips.Image.xyz(width, height)[0].linear(200 / width, 20).cast("uchar")
    image = base.bandjoin([base.linear(0.5, 30).cast("uchar"), base.linear(-0.5, 230).cast("uchar")])
    if alpha:
        image = image.bandjoin(base)
    image = image.copy(interpretation="srgb")
    if bits > 8:
        image = (image.cast("ushort") * 257).copy(interpretation="rgb16")
    source = tmp_path / "big.avif"
    image.heifsave(str(source), compression="av1", effort=0, bitdepth=bits, subsample_mode="off")
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(source)], capture_output=True, text=True, check=True
    )
    figures = {k: int(v) for k, v in json.loads(done.stdout).items()}
    # a 12 MP picture decoded whole: far above what a streamed source of its width would cost
    assert figures["peak"] > width * height * 3
    assert figures["peak"] < figures["estimate"], figures
