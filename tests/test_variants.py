"""Variants and presets: several outputs of one upload, from one decode, each with its own options;
validated at the door with a message naming the field; stored, served, listed and expired with
their job."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageStat

from imgflow.core.options import InvalidOption, read_outputs
from imgflow.core.outputs import Fit, OutputFormat, OutputLimits, ThumbnailSpec
from imgflow.core.probe import probe_buffer
from imgflow.core.settings import DEFAULT_PRESETS, Settings, StorageBackend
from imgflow.harness import images
from imgflow.harness.client import api_client, submit, wait_finished
from imgflow.operator.imagejob import job_outputs
from imgflow.worker.memory import job_memory_bytes
from imgflow.worker.pipeline import make_thumbnail, make_thumbnails
from imgflow.worker.steps.load import load_options
from tests.conftest import Processes, Stack

LIMITS = OutputLimits(max_dimension=4096)
CARD = [
    {"name": "card", "width": 400, "height": 300, "format": "webp"},
    {"name": "small", "width": 160, "height": 160, "fit": "inside", "format": "png"},
    {"name": "grey", "width": 120, "height": 120, "gravity": "north", "grayscale": True, "quality": 70},
]


def pillow(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def outputs(fields: dict[str, str], accept: str = "") -> list[ThumbnailSpec]:
    return read_outputs(fields, DEFAULT_PRESETS, LIMITS, accept).specs


# --- the door ---------------------------------------------------------------------------------


def test_variants_are_read_with_their_names_and_options() -> None:
    specs = outputs({"variants": json.dumps(CARD)})
    assert [s.name for s in specs] == ["card", "small", "grey"]
    assert (specs[0].width, specs[0].height, specs[0].fit, specs[0].format) == (400, 300, Fit.cover, "webp")
    assert (specs[1].fit, specs[1].format) == (Fit.inside, OutputFormat.png)
    assert (specs[2].gravity, specs[2].grayscale, specs[2].quality) == ("north", True, 70)
    assert (specs[2].width, specs[2].format) == (120, OutputFormat.jpeg)  # defaults where unsaid


def test_a_preset_is_its_variants_and_auto_follows_the_accept_header() -> None:
    chosen = read_outputs({"preset": "card"}, DEFAULT_PRESETS, LIMITS, "image/avif,image/webp,*/*")
    assert chosen.preset == "card" and chosen.named
    assert [(s.name, s.width, s.height, s.format) for s in chosen.specs] == [
        ("card", 400, 300, OutputFormat.avif),
        ("card@2x", 800, 600, OutputFormat.avif),
    ]
    assert {s.format for s in outputs({"preset": "card"}, "text/html")} == {OutputFormat.jpeg}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"variants": json.dumps([{**CARD[0]}, {**CARD[1], "width": 0}])}, "variants[1].width must be"),
        ({"variants": json.dumps([{**CARD[0], "height": -5}])}, "variants[0].height must be"),
        ({"variants": json.dumps([{**CARD[0], "width": 10**9}])}, "variants[0].width must be"),
        ({"variants": json.dumps([{**CARD[0], "fit": "squash"}])}, "variants[0].fit must be one of"),
        ({"variants": json.dumps([{**CARD[0], "blur": 500}])}, "variants[0].blur must be"),
        ({"variants": json.dumps([{**CARD[0], "gravity": "up"}])}, "variants[0].gravity must be"),
        ({"variants": json.dumps([{**CARD[0], "colour": "red"}])}, "variants[0].colour is not an option"),
        ({"variants": json.dumps([{"width": 10}])}, "variants[0].name must be"),
        ({"variants": json.dumps([{"name": "a/b"}])}, "variants[0].name must be"),
        ({"variants": json.dumps([CARD[0], CARD[0]])}, "variants[1].name 'card' is used twice"),
        (
            {"variants": json.dumps([{"name": f"v{i}"} for i in range(11)])},
            "variants must be a list of 1 to 10",
        ),
        ({"variants": "[]"}, "variants must be a list of 1 to 10"),
        ({"variants": "{not json"}, "variants must be a JSON list"),
        ({"variants": "[3]"}, "variants[0] must be an object"),
        ({"preset": "hero"}, "preset must be one of the service's presets (avatar, card, responsive)"),
        ({"preset": "card", "variants": json.dumps(CARD)}, "Give variants or preset, not both"),
        ({"preset": "card", "width": "300"}, "width cannot be given beside preset"),
    ],
)
def test_bad_variants_are_refused_naming_the_field(fields: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidOption) as refused:
        outputs(fields)
    assert str(refused.value).startswith(message), str(refused.value)


def test_a_bad_preset_in_the_settings_fails_the_start() -> None:
    with pytest.raises(ValueError, match=r"presets\.hero\[0\]\.width must be"):
        Settings(presets={"hero": [{"name": "hero", "width": 0}]})
    with pytest.raises(ValueError, match="preset name 'Hero!'"):
        Settings(presets={"Hero!": [{"name": "hero"}]})


def test_an_image_job_takes_variants_or_a_preset() -> None:
    spec = {"userId": "u", "sources": [], "operations": {"thumbnail": {}, "variants": CARD}}
    chosen = job_outputs(spec, DEFAULT_PRESETS, LIMITS)
    assert chosen.named and [s.name for s in chosen.specs] == ["card", "small", "grey"]
    preset = job_outputs({"operations": {"preset": "responsive"}}, DEFAULT_PRESETS, LIMITS)
    assert preset.preset == "responsive" and [s.width for s in preset.specs] == [480, 1024, 1920]
    plain = job_outputs({"operations": {"thumbnail": {"width": 64}}}, DEFAULT_PRESETS, LIMITS)
    assert not plain.named and plain.specs[0].width == 64
    with pytest.raises(InvalidOption, match=r"operations\.variants\[0\]\.width must be"):
        job_outputs({"operations": {"variants": [{"name": "a", "width": 5000}]}}, DEFAULT_PRESETS, LIMITS)
    with pytest.raises(InvalidOption, match=r"operations\.preset must be one of"):
        job_outputs({"operations": {"preset": "nope"}}, DEFAULT_PRESETS, LIMITS)


# --- the worker -------------------------------------------------------------------------------


def test_one_decode_at_the_scale_the_largest_variant_needs() -> None:
    data = images.jpeg(4000, 3000)
    info = probe_buffer(data, max_pixels=10**8, max_side=16_384)
    small, big = ThumbnailSpec(width=100, height=100), ThumbnailSpec(width=800, height=600)
    assert load_options(info, [small])["shrink"] == 8
    assert load_options(info, [small, big])["shrink"] == load_options(info, [big])["shrink"] == 4
    # the decoded image (1000 x 750 RGB at 1/4) is held for all of them: the estimate counts it
    assert job_memory_bytes(info, [small, big], len(data), quality=85) > len(data) + 1000 * 750 * 3 * 2


def test_each_variant_is_what_the_same_options_make_alone() -> None:
    data = images.exif_rotated(1200, 800, orientation=6)
    specs = [ThumbnailSpec.model_validate(v) for v in CARD]
    together = make_thumbnails(data, specs, max_pixels=10**8, max_side=16_384, quality=85)
    for spec, made in zip(specs, together, strict=True):
        alone = make_thumbnail(data, spec, max_pixels=10**8, max_side=16_384, quality=85)
        assert (made.width, made.height, made.format) == (alone.width, alone.height, alone.format)
        a, b = pillow(made.data).convert("RGB"), pillow(alone.data).convert("RGB")
        assert a.size == (made.width, made.height)
        # decoded at another shrink, so not bit-identical; a visible difference would be far more
        assert max(ImageStat.Stat(ImageChops.difference(a, b)).mean) < 4, spec.name


# --- through the API and the worker -----------------------------------------------------------


async def test_variants_are_made_stored_and_served(stack: Stack) -> None:
    client = stack.client
    reply = await submit(client, images.jpeg(1200, 900), variants=json.dumps(CARD))
    assert reply.status_code == 202, reply.text
    job = await wait_finished(client, reply.json()["jobId"])
    assert job["status"] == "completed", job
    assert [v["name"] for v in job["variants"]] == ["card", "small", "grey"]
    variants: dict[str, Any] = job["result"]["variants"]
    assert list(variants) == ["card", "small", "grey"]
    # the first is the job's thumbnail, as original clients read it
    assert job["result"]["thumbnailUrl"] == variants["card"]["url"]
    assert job["options"]["width"] == 400 and job["result"]["format"] == "webp"
    expected = {"card": ((400, 300), "WEBP"), "small": ((160, 120), "PNG"), "grey": ((120, 120), "JPEG")}
    for name, (size, kind) in expected.items():
        served = await client.get(variants[name]["url"])
        assert served.status_code == 200, name
        assert served.headers["content-type"] == f"image/{variants[name]['format']}"
        image = pillow(served.content)
        assert (image.size, image.format) == (size, kind), name
        assert (variants[name]["width"], variants[name]["height"]) == size
        assert variants[name]["bytes"] == len(served.content)
    grey = pillow((await client.get(variants["grey"]["url"])).content).convert("RGB")
    r, g, b = ImageStat.Stat(grey).mean
    assert abs(r - g) < 2 and abs(g - b) < 2  # grayscale applied to that variant only
    card = pillow((await client.get(variants["card"]["url"])).content).convert("RGB")
    r, g, b = ImageStat.Stat(card).mean
    assert abs(r - b) > 10


async def test_a_preset_through_the_api(stack: Stack) -> None:
    listed = await stack.client.get("/api/presets")
    assert listed.status_code == 200 and listed.json()["card"][0]["name"] == "card"
    reply = await stack.client.post(
        "/api/image-processing/jobs",
        files={"file": ("a.jpg", images.jpeg(1600, 1200), "image/jpeg")},
        data={"userId": "user-1", "preset": "card"},
        headers={"Accept": "image/webp,*/*"},
    )
    assert reply.status_code == 202, reply.text
    job = await wait_finished(stack.client, reply.json()["jobId"])
    assert job["status"] == "completed" and job["preset"] == "card"
    sizes = {name: (v["width"], v["height"], v["format"]) for name, v in job["result"]["variants"].items()}
    assert sizes == {"card": (400, 300, "webp"), "card@2x": (800, 600, "webp")}


async def test_bad_variants_answer_422_naming_the_field(stack: Stack) -> None:
    bad = json.dumps([CARD[0], {**CARD[1], "pixelate": 1}])
    refused = await submit(stack.client, images.jpeg(), variants=bad)
    assert refused.status_code == 422
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["detail"].startswith("variants[1].pixelate must be a whole number from 2 to 256")
    unknown = await submit(stack.client, images.jpeg(), preset="poster")
    assert unknown.status_code == 422 and "preset must be one of" in unknown.json()["detail"]
    # an outside variant too large for the source is refused from the header, naming the variant
    huge = {"name": "huge", "width": 4000, "height": 4000, "fit": "outside", "enlarge": True}
    sliver = json.dumps([{"name": "ok"}, huge])
    too_large = await submit(stack.client, images.very_wide(), variants=sliver)
    assert too_large.status_code == 422 and "variant 'huge'" in too_large.json()["detail"]


@pytest.fixture
def local_settings(fresh_settings: Settings, tmp_path: Path) -> Settings:
    return fresh_settings.model_copy(
        update={
            "storage_backend": StorageBackend.local,
            "storage_dir": tmp_path / "files",
            "retention_s": 3.0,
            "orphan_grace_s": 0.05,  # a variant taken for an orphan would go at once
            "reconcile_interval_s": 0.25,
        }
    )


async def test_variant_files_live_and_expire_with_their_job(
    processes: Processes, local_settings: Settings
) -> None:
    _, base = processes.start_api(local_settings)
    processes.start_worker(local_settings)

    def stored() -> set[str]:
        return {p.name for p in local_settings.storage_dir.iterdir() if not p.name.startswith(".")}

    async with api_client(base, timeout=30) as client:
        job_id = (await submit(client, images.jpeg(), variants=json.dumps(CARD))).json()["jobId"]
        job = await wait_finished(client, job_id)
        files = {v["url"].rsplit("/", 1)[1] for v in job["result"]["variants"].values()}
        assert files == {
            f"thumbnail-{job_id}.webp",
            f"thumbnail-{job_id}-small.png",
            f"thumbnail-{job_id}-grey.jpg",
        }
        await asyncio.sleep(1)  # several sweeps with no grace: the variants are known as the job's
        assert files <= stored()
        async with asyncio.timeout(30):
            while files & stored():  # noqa: ASYNC110 (the sweeper works in another process)
                await asyncio.sleep(0.1)
        assert (await client.get(f"/uploads/thumbnail-{job_id}-small.png")).status_code == 404
