"""Large outputs: what each encoder holds for the whole picture (JPEG's optimised Huffman tables
buffer every coefficient, WebP and GIF the whole image) stays within the memory estimate the
worker's budget charges, in both lanes. Measured in a fresh process per job, as the worker runs
(libvips' settings, two malloc arenas), on noise: the worst case for every encoder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pyvips

pytestmark = pytest.mark.slow  # 16-megapixel outputs, each encoded in a process of its own

MEASURE = r"""
import ctypes, json, sys
from imgflow.core.outputs import ThumbnailSpec
from imgflow.core.probe import configure_libvips, probe_buffer
from imgflow.worker import plain_jpeg
from imgflow.worker.memory import job_memory_bytes
from imgflow.worker.pipeline import make_thumbnail
ctypes.CDLL("libc.so.6").mallopt(-8, 2)
configure_libvips()
data = open(sys.argv[1], "rb").read()
info = probe_buffer(data, max_pixels=50_000_000, max_side=16_384)
spec = ThumbnailSpec.model_validate(json.loads(sys.argv[2]))
def hwm():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
before = hwm()
made = make_thumbnail(data, spec, max_pixels=50_000_000, max_side=16_384, quality=85, info=info)
print(json.dumps({
    "peak": hwm() - before,
    "estimate": job_memory_bytes(info, [spec], len(data), quality=85),
    "lane": plain_jpeg.takes(info, [spec]),
    "size": [made.width, made.height],
}))
"""


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("noise")
    made = {}
    for name, (width, height, orientation) in {"big": (5000, 5000, 1), "turned": (4000, 4000, 6)}.items():
        # seeded: the same pixels every run (the peaks depend on how well the noise compresses)
        grey = pyvips.Image.gaussnoise(width, height, mean=128, sigma=60, seed=7).cast("uchar")
        image = grey.bandjoin([grey.rot180(), grey.flip("horizontal")]).copy(interpretation="srgb")
        if orientation != 1:
            image.set_type(pyvips.GValue.gint_type, "orientation", orientation)
        made[name] = folder / f"{name}.jpg"
        image.jpegsave(str(made[name]), Q=95)
    return made


@pytest.mark.parametrize(
    ("source", "spec", "lane"),
    [
        ("big", {"width": 4096, "height": 4096}, False),
        ("big", {"width": 4096, "height": 4096, "quality": 95}, False),  # 4:4:4
        ("big", {"width": 4096, "height": 4096, "format": "webp", "quality": 95}, False),
        ("big", {"width": 4096, "height": 4096, "format": "gif"}, False),
        ("turned", {"width": 2000, "height": 2000, "quality": 95}, True),
        ("turned", {"width": 1000, "height": 2000, "fit": "contain", "quality": 95}, True),
    ],
    ids=["jpeg", "jpeg-444", "webp", "gif", "lane-turned", "lane-contain"],
)
def test_a_large_outputs_memory_stays_under_its_estimate(
    sources: dict[str, Path], source: str, spec: dict[str, Any], lane: bool
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(sources[source]), json.dumps(spec)],
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(done.stdout)
    assert figures["lane"] is lane
    assert figures["size"] == [spec["width"], spec["height"]]
    # the encoder's buffers are real: more than the output's pixels once over
    assert figures["peak"] > spec["width"] * spec["height"] * 3
    assert figures["peak"] < figures["estimate"], figures
