"""AVIF output and format=auto: what the bytes are, what the worker's memory estimate counts for it,
and how the API picks a format from the Accept header."""

from __future__ import annotations

import io

from PIL import Image

from imgflow.core.options import accepted_format
from imgflow.core.outputs import OutputFormat, ThumbnailSpec
from imgflow.core.probe import probe_buffer
from imgflow.harness import images
from imgflow.harness.client import submit, wait_finished
from imgflow.worker.memory import MB, job_memory_bytes
from imgflow.worker.pipeline import make_thumbnail
from tests.conftest import Stack


def test_avif_output_is_av1_in_heif_with_alpha_kept() -> None:
    for make, bands in ((images.jpeg, 3), (images.png_alpha, 4)):
        t = make_thumbnail(
            make(),
            ThumbnailSpec(width=120, height=90, format="avif"),
            max_pixels=10**8,
            max_side=16_384,
            quality=85,
        )
        # read back with Pillow's AVIF decoder (libavif), not the libheif that wrote it
        out = Image.open(io.BytesIO(t.data))
        assert out.format == "AVIF" and out.size == (120, 90) and len(out.getbands()) == bands
        assert t.data[4:12] == b"ftypavif"


def test_the_memory_estimate_counts_the_avif_encoder() -> None:
    info = probe_buffer(images.jpeg(2000, 1500), max_pixels=10**8, max_side=16_384)
    big = ThumbnailSpec(width=2048, height=2048, format="avif")
    # PNG streams: its encoder holds nothing of the whole picture
    png = job_memory_bytes(info, [big.model_copy(update={"format": OutputFormat.png})], 100_000, quality=85)
    avif = job_memory_bytes(info, [big], 100_000, quality=85)
    # measured peak of a 2048x2048 AVIF encode: 170 MB (memory.py); the estimate must cover it
    assert avif - png >= 150 * MB


def test_auto_takes_the_best_format_the_client_accepts() -> None:
    assert accepted_format("image/avif,image/webp,image/apng,*/*;q=0.8") is OutputFormat.avif
    assert accepted_format("image/webp,*/*") is OutputFormat.webp
    assert accepted_format("image/avif;q=0, image/webp;q=0.5") is OutputFormat.webp
    assert accepted_format("*/*") is OutputFormat.jpeg
    assert accepted_format("") is OutputFormat.jpeg


async def test_the_api_makes_and_serves_what_auto_chose(stack: Stack) -> None:
    client = stack.client
    chosen = {}
    for accept, expected in (
        ("image/avif,image/webp,*/*", "avif"),
        ("image/webp", "webp"),
        ("text/html", "jpeg"),
    ):
        files = {"file": ("a.jpg", images.jpeg(), "image/jpeg")}
        reply = await client.post(
            "/api/image-processing/jobs",
            files=files,
            data={"userId": "auto", "format": "auto"},
            headers={"Accept": accept},
        )
        assert reply.status_code == 202, reply.text
        job = await wait_finished(client, reply.json()["jobId"])
        assert job["options"]["format"] == job["result"]["format"] == expected
        served = await client.get(job["result"]["thumbnailUrl"])
        assert served.status_code == 200 and served.headers["content-type"] == f"image/{expected}"
        chosen[expected] = served.content
    assert chosen["avif"][4:12] == b"ftypavif"
    assert (await submit(client, images.jpeg(), format="heic")).status_code == 422


def test_a_jobs_quality_is_what_its_encoder_uses() -> None:
    photo = images.jpeg(800, 600)

    def size(**spec: object) -> int:
        t = make_thumbnail(
            photo,
            ThumbnailSpec.model_validate({"width": 300, "height": 225, **spec}),
            max_pixels=10**8,
            max_side=16_384,
            quality=85,
        )
        return len(t.data)

    for fmt in ("jpeg", "webp", "avif"):
        assert size(format=fmt, quality=20) < size(format=fmt) < size(format=fmt, quality=98), fmt
    assert size(format="png", quality=20) == size(format="png")  # lossless: no quality


async def test_quality_is_validated_at_the_door_and_shown(stack: Stack) -> None:
    for value in ("0", "101", "75.5", "high"):
        refused = await submit(stack.client, images.jpeg(), quality=value)
        assert refused.status_code == 422 and refused.json()["detail"].startswith("quality must be"), value
    job = await wait_finished(
        stack.client, (await submit(stack.client, images.jpeg(), quality="60")).json()["jobId"]
    )
    assert job["status"] == "completed" and job["options"]["quality"] == 60
