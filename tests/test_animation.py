"""Animated GIF and WebP sources stay animated in GIF and WebP outputs (every frame resized and
cropped alike, the delays kept), give their first frame to the other formats or when asked with
animated=false, and are bounded from the header: frames and pixels over all frames."""

from __future__ import annotations

import io

import pytest
import pyvips
from PIL import Image, ImageSequence, ImageStat

from imgflow.core.outputs import OutputFormat, OutputLimits, ThumbnailSpec, refusal
from imgflow.core.probe import probe_buffer
from imgflow.harness import images
from imgflow.harness.client import submit, wait_finished
from imgflow.worker.memory import job_memory_bytes
from imgflow.worker.pipeline import make_thumbnails
from tests.conftest import Stack

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (230, 230, 30)]


def animation(fmt: str = "gif", width: int = 120, height: int = 90, delay: int = 80) -> bytes:
    """A frame of each colour, ``delay`` ms each, looping for ever."""
    frames = [(pyvips.Image.black(width, height) + list(c)).cast("uchar") for c in COLOURS]
    strip = pyvips.Image.arrayjoin(frames, across=1).copy(interpretation="srgb")
    strip.set_type(pyvips.GValue.gint_type, "page-height", height)
    strip.set_type(pyvips.GValue.array_int_type, "delay", [delay] * len(frames))
    strip.set_type(pyvips.GValue.gint_type, "loop", 0)
    save = strip.gifsave_buffer if fmt == "gif" else strip.webpsave_buffer
    return bytes(save())


def make(data: bytes, *specs: ThumbnailSpec) -> list[Image.Image]:
    made = make_thumbnails(data, list(specs), max_pixels=10**8, max_side=16_384, quality=90)
    out: list[Image.Image] = []
    for spec, thumbnail in zip(specs, made, strict=True):
        image = Image.open(io.BytesIO(thumbnail.data))
        assert image.size == (thumbnail.width, thumbnail.height), spec
        out.append(image)
    return out


def colours(image: Image.Image) -> list[tuple[int, ...]]:
    """The mean colour of each frame."""
    return [
        tuple(round(v) for v in ImageStat.Stat(f.convert("RGB")).mean) for f in ImageSequence.Iterator(image)
    ]


def frames(image: Image.Image) -> int:
    return int(getattr(image, "n_frames", 1))


def near(a: tuple[int, ...], b: tuple[int, ...], within: int = 12) -> bool:
    return all(abs(x - y) <= within for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("source", ["gif", "webp"])
@pytest.mark.parametrize("output", ["gif", "webp"])
def test_an_animation_stays_animated_frame_by_frame(source: str, output: str) -> None:
    [image] = make(animation(source), ThumbnailSpec(width=60, height=60, format=output))
    assert image.size == (60, 60) and image.format == output.upper()
    seen = colours(image)
    assert len(seen) == 4
    for got, expected in zip(seen, COLOURS, strict=True):
        assert near(got, expected), (got, expected)
    assert image.info.get("duration") == 80  # each frame's delay, kept
    assert image.info.get("loop") == 0


def test_other_formats_and_animated_false_give_the_first_frame() -> None:
    data = animation()
    for spec in (
        ThumbnailSpec(width=60, height=60, format="jpeg"),
        ThumbnailSpec(width=60, height=60, format="png"),
        ThumbnailSpec(width=60, height=60, format="avif"),  # libvips writes no AVIF sequences
        ThumbnailSpec(width=60, height=60, format="gif", animated=False),
    ):
        made = make_thumbnails(data, [spec], max_pixels=10**8, max_side=16_384, quality=90)[0]
        if spec.format is OutputFormat.avif:
            assert made.data[4:12] == b"ftypavif" and (made.width, made.height) == (60, 60)
            continue
        [image] = make(data, spec)
        assert frames(image) == 1, spec
        assert near(colours(image)[0], COLOURS[0]), spec


def test_variants_of_an_animation_from_one_decode() -> None:
    specs = [
        ThumbnailSpec(name="moving", width=40, height=40, format="webp"),
        ThumbnailSpec(name="poster", width=80, height=60, format="jpeg"),
        ThumbnailSpec(name="wide", width=100, height=50, fit="contain", format="gif"),
    ]
    moving, poster, wide = make(animation(), *specs)
    assert (frames(moving), moving.size) == (4, (40, 40))
    assert frames(poster) == 1 and poster.size == (80, 60)
    assert (frames(wide), wide.size) == (4, (100, 50))


def test_limits_are_read_from_the_header() -> None:
    data = animation()
    info = probe_buffer(data, max_pixels=10**8, max_side=16_384)
    assert (info.format, info.pages) == ("gif", 4)
    spec = [ThumbnailSpec(format="gif")]
    limits = OutputLimits(4096, max_frames=3)
    refused = refusal(spec, info.format, info.displayed, info.pages, limits)
    assert refused is not None and refused[0] == "Animation too large"
    assert "4 frames, more than the 3 allowed" in refused[1] and "animated=false" in refused[1]
    few_pixels = OutputLimits(4096, max_animation_pixels=120 * 90 * 3)
    refused = refusal(spec, info.format, info.displayed, info.pages, few_pixels)
    assert refused is not None and "43,200 pixels" in refused[1]
    # the first frame alone, or a format that cannot animate, is not an animation
    first = [ThumbnailSpec(format="gif", animated=False)]
    assert refusal(first, info.format, info.displayed, info.pages, limits) is None
    assert refusal([ThumbnailSpec(format="jpeg")], info.format, info.displayed, info.pages, limits) is None
    # every frame is decoded at once: the memory estimate counts them
    still = job_memory_bytes(info, first, len(data), quality=85)
    assert job_memory_bytes(info, spec, len(data), quality=85) >= still + 120 * 90 * 4 * 4


async def test_an_animation_through_the_api(stack: Stack) -> None:
    reply = await submit(stack.client, animation(), filename="a.gif", content_type="image/gif", format="gif")
    assert reply.status_code == 202, reply.text
    job = await wait_finished(stack.client, reply.json()["jobId"])
    assert job["status"] == "completed" and job["result"]["format"] == "gif"
    served = await stack.client.get(job["result"]["thumbnailUrl"])
    assert served.headers["content-type"] == "image/gif"
    image = Image.open(io.BytesIO(served.content))
    assert (frames(image), image.size) == (4, (100, 100))
    first = await submit(stack.client, animation(), format="webp", animated="false")
    job = await wait_finished(stack.client, first.json()["jobId"])
    assert job["options"]["animated"] is False
    served = await stack.client.get(job["result"]["thumbnailUrl"])
    assert frames(Image.open(io.BytesIO(served.content))) == 1
    bad = await submit(stack.client, images.jpeg(), animated="sometimes")
    assert bad.status_code == 422 and bad.json()["detail"].startswith("animated must be true or false")


def test_a_smart_crop_holds_still_across_frames() -> None:
    """attention finds its point on the first frame, and every frame is cut there: a crop that
    followed whatever moves would make the picture jump."""
    frames = []
    for x in (20, 140, 260):  # a bright square moving right over a dark field
        frames.append((pyvips.Image.black(300, 100) + 30).draw_rect(255, x, 30, 30, 30, fill=True))
    strip = pyvips.Image.arrayjoin([f.bandjoin([f, f]) for f in frames], across=1).cast("uchar")
    strip = strip.copy(interpretation="srgb")
    strip.set_type(pyvips.GValue.gint_type, "page-height", 100)
    [image] = make(
        bytes(strip.gifsave_buffer()), ThumbnailSpec(width=100, height=100, format="gif", gravity="attention")
    )
    brightest = [ImageStat.Stat(frame.convert("L")).extrema[0][1] for frame in ImageSequence.Iterator(image)]
    assert brightest[0] > 200  # the first frame's square is what the crop kept
    assert max(brightest[1:]) < 100  # and the crop stayed there as the square moved on
