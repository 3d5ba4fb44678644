"""Where a cover crop lands (gravity: compass points, focal points and smart crops, on images built
for it, in every EXIF orientation), fit=outside, and the filters; through the pipeline and the API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import pyvips
import yaml

from imgflow.core.outputs import GRAVITY_PATTERN, Fit, ThumbnailSpec, oversize
from imgflow.harness import images
from imgflow.harness.client import submit, wait_finished
from imgflow.worker.pipeline import make_thumbnail
from tests.conftest import Stack

ROOT = Path(__file__).parents[1]

# how to store a picture so that, with this EXIF orientation, it is displayed as drawn
STORE_FOR: dict[int, Callable[[pyvips.Image], pyvips.Image]] = {
    1: lambda d: d,
    2: lambda d: d.fliphor(),
    3: lambda d: d.rot180(),
    4: lambda d: d.flipver(),
    5: lambda d: d.rot90().fliphor(),
    6: lambda d: d.rot270(),
    7: lambda d: d.rot270().fliphor(),
    8: lambda d: d.rot90(),
}


def picture(width: int, height: int, spot: tuple[int, int]) -> pyvips.Image:
    """Dark grey, with one bright 80x80 square whose top-left corner is at ``spot`` (as shown)."""
    dark = pyvips.Image.black(width, height, bands=3) + 40
    square = pyvips.Image.black(80, 80, bands=3) + 250
    return dark.insert(square, *spot).cast("uchar").copy(interpretation="srgb")


def stored(displayed: pyvips.Image, orientation: int) -> bytes:
    image = STORE_FOR[orientation](displayed).copy()
    image.set_type(pyvips.GValue.gint_type, "orientation", orientation)
    return bytes(image.jpegsave_buffer(Q=95))


def brightness(data: bytes, **spec: object) -> float:
    t = make_thumbnail(
        data, ThumbnailSpec.model_validate(spec), max_pixels=50_000_000, max_side=16_384, quality=90
    )
    out = pyvips.Image.new_from_buffer(t.data, "")
    assert (out.width, out.height) == (spec["width"], spec["height"])
    return float(out.avg())


@pytest.mark.parametrize("orientation", sorted(STORE_FOR))
def test_the_crop_keeps_what_the_gravity_names_in_every_orientation(orientation: int) -> None:
    wide = stored(picture(600, 200, (510, 60)), orientation)  # the bright square at the east end
    tall = stored(picture(200, 600, (60, 510)), orientation)  # ... at the south end
    box = {"width": 100, "height": 100, "fit": "cover"}
    kept = {g: brightness(wide, gravity=g, **box) for g in ("centre", "east", "west", "fp:0.92,0.5")}
    assert kept["east"] > 60 and kept["fp:0.92,0.5"] > 60, kept  # the square is in it (16% of it)
    assert kept["centre"] < 45 and kept["west"] < 45, kept  # only dark grey
    down = {g: brightness(tall, gravity=g, **box) for g in ("north", "south", "south-east", "fp:0.5,0.95")}
    assert down["south"] > 60 and down["south-east"] > 60 and down["fp:0.5,0.95"] > 60, down
    assert down["north"] < 45, down


def test_outside_covers_the_box_without_cropping() -> None:
    for size, expected in (((400, 200), (200, 100)), ((200, 400), (100, 200)), ((300, 300), (100, 100))):
        data = bytes(picture(*size, (0, 0)).jpegsave_buffer())
        t = make_thumbnail(
            data,
            ThumbnailSpec(width=100, height=100, fit="outside"),
            max_pixels=10**8,
            max_side=16_384,
            quality=85,
        )
        assert (t.width, t.height) == expected
    # a sliver would become enormous: refused with the figures, before anything is decoded
    why = oversize([ThumbnailSpec(width=100, height=100, fit="outside")], (16_000, 10), 4096)
    assert why is not None and "160000x100" in why and "IMGFLOW_MAX_OUTPUT_DIMENSION" in why
    assert oversize([ThumbnailSpec(width=100, height=100, fit="cover")], (16_000, 10), 4096) is None


async def test_the_api_takes_gravity_and_outside_and_refuses_what_cannot_be(stack: Stack) -> None:
    client = stack.client
    wide = stored(picture(600, 200, (510, 60)), 6)
    accepted = await submit(client, wide, width="100", height="100", gravity="East")
    assert accepted.status_code == 202, accepted.text
    job = await wait_finished(client, accepted.json()["jobId"])
    assert job["status"] == "completed" and job["options"]["gravity"] == "east"
    thumbnail = pyvips.Image.new_from_buffer((await client.get(job["result"]["thumbnailUrl"])).content, "")
    assert thumbnail.avg() > 60
    outside = await submit(client, bytes(picture(400, 200, (0, 0)).jpegsave_buffer()), fit="outside")
    done = await wait_finished(client, outside.json()["jobId"])
    assert (done["result"]["width"], done["result"]["height"]) == (200, 100)

    for gravity in ("middle", "fp:2,0", "fp:0.5", "north-north-east"):
        refused = await submit(client, wide, gravity=gravity)
        assert refused.status_code == 422 and "gravity must be one of" in refused.json()["detail"], gravity
    sliver = bytes((pyvips.Image.black(8000, 4, bands=3) + 90).cast("uchar").pngsave_buffer())
    refused = await submit(client, sliver, fit="outside", width="100", height="100", enlarge="true")
    assert refused.status_code == 422 and refused.json()["title"] == "Thumbnail too large"
    assert "200000x100" in refused.json()["detail"]


@pytest.mark.parametrize("gravity", ["attention", "entropy"])
def test_smart_crops_find_the_object_wherever_it_is(gravity: str) -> None:
    # a textured, saturated object on a flat background, off-centre; once displayed turned a quarter
    scene = pyvips.Image.black(600, 200, bands=3) + 40
    rng = pyvips.Image.gaussnoise(80, 80, sigma=60, mean=128).cast("uchar")
    thing = rng.bandjoin([rng.invert(), (rng / 2).cast("uchar")]).copy(interpretation="srgb")
    displayed = scene.insert(thing, 480, 60).cast("uchar").copy(interpretation="srgb")
    for orientation in (1, 6):
        data = stored(displayed, orientation)
        box = {"width": 100, "height": 100, "fit": "cover"}
        # the background alone averages 40; the object (a sixth of a 200x200 crop) lifts it to ~50
        assert brightness(data, gravity=gravity, **box) > 46
        assert brightness(data, gravity="centre", **box) < 42


def test_the_crds_gravity_pattern_is_the_apis() -> None:
    crd = yaml.safe_load((ROOT / "deploy/helm/imgflow/crds/imagejobs.imgflow.io.yaml").read_text())
    version = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    thumbnail = version["properties"]["spec"]["properties"]["operations"]["properties"]["thumbnail"]
    assert thumbnail["properties"]["gravity"]["pattern"] == GRAVITY_PATTERN
    assert thumbnail["properties"]["fit"]["enum"] == [f.value for f in Fit]


def spread(data: bytes, **spec: object) -> tuple[float, pyvips.Image]:
    t = make_thumbnail(
        data, ThumbnailSpec.model_validate(spec), max_pixels=10**8, max_side=16_384, quality=95
    )
    out = pyvips.Image.new_from_buffer(t.data, "")
    return float(out.deviate()), out


def test_filters_do_what_their_names_say() -> None:
    # a sharp checkerboard of 10-pixel squares
    board = ((pyvips.Image.xyz(200, 200) // 10)[0] + (pyvips.Image.xyz(200, 200) // 10)[1]) % 2 * 200 + 20
    data = bytes(
        board.cast("uchar").bandjoin([board.cast("uchar")] * 2).copy(interpretation="srgb").pngsave_buffer()
    )
    box = {"width": 200, "height": 200, "format": "png"}
    plain, _ = spread(data, **box)
    blurred, _ = spread(data, blur=4, **box)
    assert blurred < plain * 0.8  # edges softened
    photo = images.jpeg(400, 300)
    soft, _ = spread(photo, width=200, height=150, format="png")
    crisp, _ = spread(photo, width=200, height=150, format="png", sharpen=2)
    assert crisp > soft
    _, blocks = spread(photo, width=200, height=150, format="png", pixelate=25)
    for bx in range(0, 200, 25):  # every 25x25 block is one colour
        for by in range(0, 150, 25):
            block = blocks.crop(bx, by, 25, 25)
            assert all(block[i].max() == block[i].min() for i in range(3)), (bx, by)
    _, grey = spread(images.png_alpha(), width=100, height=100, format="png", grayscale=True)
    assert grey.bands == 4  # alpha kept
    r, g, b = grey[0], grey[1], grey[2]
    assert (r - g).abs().max() <= 1 and (g - b).abs().max() <= 1
    assert r.deviate() > 1  # still a picture, in grey


async def test_filters_are_validated_at_the_door_naming_the_field(stack: Stack) -> None:
    photo = images.jpeg()
    for field, value in (
        ("blur", "0"),
        ("blur", "51"),
        ("sharpen", "x"),
        ("pixelate", "2.5"),
        ("pixelate", "1"),
        ("grayscale", "maybe"),
    ):
        refused = await submit(stack.client, photo, **{field: value})
        assert refused.status_code == 422 and refused.json()["detail"].startswith(f"{field} must be"), (
            field,
            value,
        )
    accepted = await submit(stack.client, photo, blur="1.5", grayscale="true", pixelate="4")
    job = await wait_finished(stack.client, accepted.json()["jobId"])
    assert job["status"] == "completed"
    assert {k: job["options"][k] for k in ("blur", "grayscale", "pixelate")} == {
        "blur": 1.5,
        "grayscale": True,
        "pixelate": 4,
    }
    assert "sharpen" not in job["options"]
