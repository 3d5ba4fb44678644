"""Calibration of the job cost model (imgflow.core.cost): the worker's pipeline CPU per job for a few
shapes of job, beside the model's estimate. One thread (libvips' too), CPU time of this process.

    uv run --frozen python -m bench.cost
"""

from __future__ import annotations

import os

os.environ.setdefault("VIPS_CONCURRENCY", "1")  # before pyvips starts its threads

import time

from imgflow.core import cost
from imgflow.core.outputs import ThumbnailSpec
from imgflow.harness import images
from imgflow.worker.pipeline import make_thumbnails

SECONDS = 1.0
CASES: list[tuple[tuple[int, int], dict[str, object]]] = [
    ((1000, 1000), {}),
    ((3000, 3000), {}),
    ((1000, 1000), {"width": 1000, "height": 1000}),
    ((1000, 1000), {"width": 1000, "height": 1000, "format": "png"}),
    ((1000, 1000), {"width": 1000, "height": 1000, "format": "webp"}),
    ((1000, 1000), {"width": 1000, "height": 1000, "format": "avif"}),
    ((1000, 1000), {"width": 1000, "height": 1000, "blur": 5.0}),
    ((1000, 1000), {"width": 1000, "height": 500, "gravity": "attention"}),
    ((3000, 3000), {"width": 2000, "height": 2000}),
]


def cpu_ms(data: bytes, specs: list[ThumbnailSpec]) -> float:
    """Pipeline CPU per job, averaged over at least ``SECONDS`` of CPU."""
    make_thumbnails(data, specs, max_pixels=10**9, max_side=20_000, quality=85)  # warm-up
    runs, start = 0, time.process_time()
    while time.process_time() - start < SECONDS:
        make_thumbnails(data, specs, max_pixels=10**9, max_side=20_000, quality=85)
        runs += 1
    return (time.process_time() - start) / runs * 1000


def main() -> None:
    print(f"{'source':>10} {'output':<40} {'measured ms':>12} {'estimate ms':>12} {'ratio':>6}")
    for (width, height), options in CASES:
        specs = [ThumbnailSpec.model_validate(options)]
        measured = cpu_ms(images.jpeg(width, height), specs)
        estimated = cost.estimate(specs, cost.Source(width, height))
        shown = ", ".join(f"{k}={v}" for k, v in options.items()) or "100x100 jpeg (default)"
        print(f"{width}x{height:<5} {shown:<40} {measured:12.1f} {estimated:12d} {estimated / measured:6.2f}")


if __name__ == "__main__":
    main()
