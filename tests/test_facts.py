"""Image facts and placeholders in every result, through the real API and worker: what a page
reads from GET .../jobs/{jobId} is checked against the source it sent and the thumbnail it
downloads (the ThumbHash and BlurHash decoded and compared with the thumbnail's pixels)."""

from __future__ import annotations

import base64
import io
import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pyvips
from PIL import Image

from imgflow.harness import images
from imgflow.harness.client import make_key, submit, wait_finished
from imgflow.worker import blurhash, thumbhash
from tests.conftest import Stack
from tests.test_cli import environment, imgflow


async def completed(stack: Stack, data: bytes, **fields: str) -> dict[str, Any]:
    answer = await submit(stack.client, data, **fields)
    assert answer.status_code == 202, answer.text
    job = await wait_finished(stack.client, answer.json()["jobId"])
    assert job["status"] == "completed", job
    return job


async def picture(stack: Stack, url: str) -> Image.Image:
    answer = await stack.client.get(url)
    assert answer.status_code == 200
    return Image.open(io.BytesIO(answer.content))


def distance(placeholder: np.ndarray, shown: Image.Image) -> float:
    """Mean difference per channel (0-255) between a decoded placeholder and the picture brought
    to its size."""
    height, width, bands = placeholder.shape
    mode = {1: "L", 3: "RGB", 4: "RGBA"}[bands]
    small = np.asarray(shown.convert(mode).resize((width, height), Image.Resampling.BOX), dtype=float)
    return float(np.abs(small.reshape(height, width, bands) - placeholder.astype(float)).mean())


def stripes(width: int, height: int) -> pyvips.Image:
    """Left 60% red, then 30% blue, then 10% green."""
    red, blue = int(width * 0.6), int(width * 0.3)
    parts = [
        pyvips.Image.black(red, height, bands=3) + [200, 30, 30],
        pyvips.Image.black(blue, height, bands=3) + [20, 40, 220],
        pyvips.Image.black(width - red - blue, height, bands=3) + [30, 200, 60],
    ]
    return (
        parts[0]
        .join(parts[1], "horizontal")
        .join(parts[2], "horizontal")
        .cast("uchar")
        .copy(interpretation="srgb")
    )


def near(colour: str, rgb: tuple[int, int, int], within: int = 24) -> bool:
    value = bytes.fromhex(colour.removeprefix("#"))
    return all(abs(a - b) <= within for a, b in zip(value, rgb, strict=True))


async def test_the_result_says_what_the_source_was(stack: Stack) -> None:
    """A 400x200 JPEG stored sideways (EXIF orientation 6) with a Display P3 profile."""
    source = images.halves(400, 200).icc_transform("p3", intent="perceptual").copy()
    source.set_type(pyvips.GValue.gint_type, "orientation", 6)
    job = await completed(stack, bytes(source.jpegsave_buffer(Q=90, profile="p3")))
    assert job["result"]["source"] == {
        "format": "jpeg",
        "width": 400,
        "height": 200,
        "orientation": 6,
        "hasAlpha": False,
        "animated": False,
        "frames": 1,
        "iccProfile": "sP3C",  # what libvips' own P3 profile calls itself
    }


async def test_an_animation_and_an_alpha_png_are_said_so(stack: Stack) -> None:
    gif = await completed(stack, images.animated_gif(frames=3), filename="a.gif", content_type="image/gif")
    assert (
        gif["result"]["source"] | {"format": "gif", "animated": True, "frames": 3, "hasAlpha": True}
        == (gif["result"]["source"])
    )
    png = await completed(stack, images.png_alpha(), filename="a.png", content_type="image/png")
    facts = png["result"]["source"]
    assert (facts["format"], facts["hasAlpha"], facts["animated"], facts["frames"]) == ("png", True, False, 1)
    assert "iccProfile" not in facts  # it has none


@pytest.mark.parametrize(
    "fields",
    [
        {"width": "160", "height": "120"},  # a plain JPEG to JPEG: the Pillow lane
        {"width": "160", "height": "120", "format": "webp"},  # libvips' lane
    ],
)
async def test_the_thumbhash_decodes_to_the_thumbnail(stack: Stack, fields: dict[str, str]) -> None:
    job = await completed(stack, bytes(stripes(640, 480).jpegsave_buffer(Q=90)), **fields)
    result = job["result"]
    shown = await picture(stack, result["thumbnailUrl"])
    decoded = thumbhash.decode(base64.b64decode(result["placeholder"]["thumbhash"]))
    assert abs(thumbhash.aspect_ratio(base64.b64decode(result["placeholder"]["thumbhash"])) - 160 / 120) < 0.2
    # close to the thumbnail (a ThumbHash rings at hard edges and boosts saturation), and far from
    # the same stripes the other way round
    assert distance(decoded, shown) < 40
    assert distance(decoded, shown.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) > 3 * distance(decoded, shown)
    placeholder = result["placeholder"]
    assert near(placeholder["dominantColor"], (200, 30, 30))
    assert placeholder["palette"][0] == placeholder["dominantColor"]
    assert near(placeholder["palette"][1], (20, 40, 220))
    assert any(near(colour, (30, 200, 60)) for colour in placeholder["palette"])
    assert "blurhash" not in placeholder  # not asked for


async def test_an_alpha_output_keeps_its_alpha_in_the_thumbhash(stack: Stack) -> None:
    job = await completed(
        stack,
        images.png_alpha(),
        filename="a.png",
        content_type="image/png",
        format="png",
        width="120",
        height="90",
    )
    shown = await picture(stack, job["result"]["thumbnailUrl"])
    decoded = thumbhash.decode(base64.b64decode(job["result"]["placeholder"]["thumbhash"]))
    assert decoded.shape[2] == 4 and decoded[..., 3].min() < 128 < decoded[..., 3].max()
    assert distance(decoded[..., 3:], shown.getchannel("A")) < 25


async def test_each_variant_has_its_placeholder_and_a_blurhash_when_it_asks(stack: Stack) -> None:
    variants = [
        {"name": "card", "width": 200, "height": 150, "format": "webp", "blurhash": True},
        {"name": "square", "width": 90, "height": 90},
    ]
    job = await completed(
        stack, bytes(stripes(640, 480).jpegsave_buffer(Q=90)), variants=json.dumps(variants)
    )
    card, square = job["result"]["variants"]["card"], job["result"]["variants"]["square"]
    assert job["variants"][0]["blurhash"] is True and "blurhash" not in job["variants"][1]
    assert "blurhash" not in square["placeholder"]
    shown = await picture(stack, card["url"])
    decoded = blurhash.decode(card["placeholder"]["blurhash"], 32, 24)
    # 4x3 terms in linear light ring more than a ThumbHash at the stripes' hard edges
    assert distance(decoded, shown) < 45
    assert distance(decoded, shown.transpose(Image.Transpose.FLIP_LEFT_RIGHT)) > 3 * distance(decoded, shown)
    # the first variant's is the result's own, as its thumbnailUrl is
    assert job["result"]["placeholder"] == card["placeholder"]


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"blurhash": "maybe"}, "blurhash"),
        ({"variants": json.dumps([{"name": "a", "blurhash": "yes"}])}, "variants[0].blurhash"),
    ],
)
async def test_a_bad_blurhash_option_is_refused_naming_the_field(
    stack: Stack, fields: dict[str, str], named: str
) -> None:
    answer = await submit(stack.client, images.jpeg(64, 64), **fields)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["detail"].startswith(f"{named} must be true or false")


async def test_the_cli_shows_them_in_jobs_get(stack: Stack, tmp_path: Path) -> None:
    key = await make_key(stack.client, f"facts-{uuid.uuid4().hex[:8]}", "jobs:write", "jobs:read")
    env = environment(stack.base_url, key, tmp_path)
    (tmp_path / "stripes.jpg").write_bytes(bytes(stripes(640, 480).jpegsave_buffer(Q=90)))
    sent = await imgflow(
        env, "-o", "json", "submit", tmp_path / "stripes.jpg", "-O", "blurhash=true", "--wait"
    )
    assert sent.returncode == 0, sent.stderr
    [job] = json.loads(sent.stdout)["jobs"]
    shown = await imgflow(env, "jobs", "get", job["jobId"])
    assert shown.returncode == 0, shown.stderr
    lines = {line.split()[1]: line for line in shown.stdout.splitlines() if line.count("│") >= 3}
    assert "640" in lines["result.source.width"] and "jpeg" in lines["result.source.format"]
    for name in ("thumbhash", "blurhash", "dominantColor", "palette"):
        assert f"result.placeholder.{name}" in lines, shown.stdout
