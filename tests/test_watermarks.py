"""Watermarks: a tenant uploads a PNG once and names it in a job's options (or a variant's); the
worker composites it where the position says, at its margin, opacity and scale. Other tenants
cannot use it, bad options are refused at the door naming the field."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from imgflow.core.options import InvalidOption, read_outputs
from imgflow.core.outputs import OutputLimits, ThumbnailSpec
from imgflow.core.settings import DEFAULT_PRESETS
from imgflow.harness import images
from imgflow.harness.client import JOBS, api_client, make_key, submit, wait_finished
from imgflow.worker.pipeline import make_thumbnails
from tests.conftest import Stack

MARK_ID = "wm_0123456789abcdef"
GREY = (40, 40, 40)


def grey_jpeg(width: int = 800, height: int = 600) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), GREY).save(out, "JPEG", quality=95)
    return out.getvalue()


def red_png(width: int = 200, height: int = 100) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (width, height), (255, 0, 0, 255)).save(out, "PNG")
    return out.getvalue()


def make(spec: ThumbnailSpec, source: bytes | None = None) -> Image.Image:
    [made] = make_thumbnails(
        source or grey_jpeg(),
        [spec],
        max_pixels=10**8,
        max_side=16_384,
        quality=90,
        watermarks={MARK_ID: red_png()},
    )
    image = Image.open(io.BytesIO(made.data))
    image.load()
    return image


def red_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """Where the watermark landed: the bounding box of the clearly red pixels."""
    r, g, _ = image.convert("RGB").split()
    mask = Image.eval(r, lambda v: 255 if v > 120 else 0)
    mask = Image.composite(mask, Image.new("L", image.size, 0), Image.eval(g, lambda v: 255 if v < 90 else 0))
    return mask.getbbox()


@pytest.mark.parametrize(
    ("position", "corner"),
    [
        ("south-east", "bottom-right"),
        ("north-west", "top-left"),
        ("north", "top-centre"),
        ("centre", "centre"),
    ],
)
def test_the_mark_lands_where_its_position_says(position: str, corner: str) -> None:
    spec = ThumbnailSpec(
        width=400,
        height=300,
        format="png",
        watermark=MARK_ID,
        watermark_position=position,
        watermark_margin=10,
    )
    box = red_box(make(spec))
    assert box is not None
    left, top, right, bottom = box
    # scale 0.25 of a 400-wide output: 100 x 50 (the mark is 2:1)
    assert (right - left, bottom - top) == (100, 50)
    expected = {
        "bottom-right": (290, 240),
        "top-left": (10, 10),
        "top-centre": (150, 10),
        "centre": (150, 125),
    }[corner]
    assert (left, top) == expected


def test_opacity_and_scale() -> None:
    half = make(ThumbnailSpec(width=400, height=300, format="png", watermark=MARK_ID, watermark_opacity=0.5))
    pixel = half.convert("RGB").getpixel((340, 260))  # inside the south-east mark
    assert isinstance(pixel, tuple)
    r, g, b = pixel
    assert abs(r - (255 + 40) / 2) < 3 and abs(g - 20) < 3 and abs(b - 20) < 3
    big = red_box(
        make(ThumbnailSpec(width=400, height=300, format="png", watermark=MARK_ID, watermark_scale=0.5))
    )
    assert big is not None and big[2] - big[0] == 200
    # never larger than the output leaves room for: a 1.0 scale on a tall output fits its width
    fit = red_box(
        make(ThumbnailSpec(width=100, height=300, format="png", watermark=MARK_ID, watermark_scale=1.0))
    )
    assert fit is not None and fit[2] - fit[0] == 100 - 2 * 16


def test_only_the_variants_that_ask_are_marked() -> None:
    specs = [
        ThumbnailSpec(name="plain", width=200, height=150),
        ThumbnailSpec(name="marked", width=400, height=300, watermark=MARK_ID),
    ]
    plain, marked = make_thumbnails(
        grey_jpeg(), specs, max_pixels=10**8, max_side=16_384, quality=90, watermarks={MARK_ID: red_png()}
    )
    assert red_box(Image.open(io.BytesIO(plain.data))) is None
    assert red_box(Image.open(io.BytesIO(marked.data))) is not None


def test_a_transparent_source_keeps_its_alpha_under_the_mark() -> None:
    image = make(ThumbnailSpec(width=160, height=120, format="png", watermark=MARK_ID), images.png_alpha())
    assert image.mode == "RGBA"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"watermarkOpacity": "0.5"}, "watermarkOpacity needs watermark"),
        ({"watermark": "logo.png"}, "watermark must be a watermark id"),
        ({"watermark": MARK_ID, "watermarkOpacity": "0"}, "watermarkOpacity must be a number from 0.05 to 1"),
        ({"watermark": MARK_ID, "watermarkOpacity": "2"}, "watermarkOpacity must be a number from 0.05 to 1"),
        ({"watermark": MARK_ID, "watermarkMargin": "-1"}, "watermarkMargin must be a whole number from 0"),
        ({"watermark": MARK_ID, "watermarkScale": "5"}, "watermarkScale must be a number from 0.01 to 1"),
        ({"watermark": MARK_ID, "watermarkPosition": "up"}, "watermarkPosition must be one of"),
        (
            {"variants": json.dumps([{"name": "a"}, {"name": "b", "watermarkScale": 0.5}])},
            "variants[1].watermarkScale needs variants[1].watermark",
        ),
    ],
)
def test_bad_watermark_options_name_the_field(fields: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidOption) as refused:
        read_outputs(fields, DEFAULT_PRESETS, OutputLimits(4096))
    assert str(refused.value).startswith(message), str(refused.value)


# --- through the API and the worker -----------------------------------------------------------


async def test_a_tenant_uploads_a_watermark_and_its_jobs_wear_it(stack: Stack) -> None:
    async with (
        api_client(
            stack.base_url, key=await make_key(stack.client, "acme", "jobs:write", "jobs:read")
        ) as acme,
        api_client(
            stack.base_url, key=await make_key(stack.client, "globex", "jobs:write", "jobs:read")
        ) as globex,
    ):
        made = await acme.post(
            "/api/watermarks", files={"file": ("logo.png", red_png(), "image/png")}, data={"name": "logo"}
        )
        assert made.status_code == 201, made.text
        mark = made.json()
        assert (mark["width"], mark["height"], mark["name"]) == (200, 100, "logo")
        assert made.headers["location"] == f"/api/watermarks/{mark['id']}"
        assert [m["id"] for m in (await acme.get("/api/watermarks")).json()["watermarks"]] == [mark["id"]]
        assert (await globex.get("/api/watermarks")).json()["watermarks"] == []

        variants = json.dumps(
            [
                {"name": "card", "width": 400, "height": 300, "format": "png", "watermark": mark["id"]},
                {"name": "small"},
            ]
        )
        reply = await submit(acme, grey_jpeg(), variants=variants)
        assert reply.status_code == 202, reply.text
        job = await wait_finished(acme, reply.json()["jobId"])
        assert job["status"] == "completed", job
        assert job["variants"][0]["watermark"] == mark["id"]
        assert job["variants"][0]["watermarkPosition"] == "south-east"
        assert "watermarkPosition" not in job["variants"][1]
        card = Image.open(io.BytesIO((await acme.get(job["result"]["variants"]["card"]["url"])).content))
        assert red_box(card) == (400 - 16 - 100, 300 - 16 - 50, 400 - 16, 300 - 16)

        # another tenant cannot use it
        refused = await submit(globex, grey_jpeg(), watermark=mark["id"])
        assert refused.status_code == 422
        assert refused.json()["detail"].startswith(f"watermark: there is no watermark {mark['id']!r}")
        assert (await globex.delete(f"/api/watermarks/{mark['id']}")).status_code == 404

        # deleted: gone from the list, and new jobs cannot name it
        assert (await acme.delete(f"/api/watermarks/{mark['id']}")).status_code == 204
        assert (await acme.get("/api/watermarks")).json()["watermarks"] == []
        assert (await submit(acme, grey_jpeg(), watermark=mark["id"])).status_code == 422


async def test_only_small_pngs_are_watermarks(stack: Stack) -> None:
    upload = stack.client.post
    jpeg = await upload("/api/watermarks", files={"file": ("logo.jpg", grey_jpeg(), "image/png")})
    assert jpeg.status_code == 415 and "PNG" in jpeg.json()["detail"]
    wide = await upload("/api/watermarks", files={"file": ("wide.png", red_png(3000, 10), "image/png")})
    assert wide.status_code == 422 and wide.json()["title"] == "Watermark too large"
    heavy = io.BytesIO()
    Image.frombytes("RGB", (1024, 1024), bytes(range(256)) * 12288).save(heavy, "PNG", compress_level=0)
    big = await upload("/api/watermarks", files={"file": ("big.png", heavy.getvalue(), "image/png")})
    assert big.status_code == 413
    empty = await upload("/api/watermarks", files={"file": ("none.png", b"", "image/png")})
    assert empty.status_code == 422
    assert (await upload(JOBS.replace("image-processing/jobs", "watermarks"))).status_code == 415  # no body
