"""What each output's placeholder (ThumbHash, palette, dominant colour; BlurHash when asked) adds to
the engine: the CPU spent making placeholders against the rest of the pipeline's, per job, for a
few shapes of job on the corpus (target: at most 5 %).

One thread (libvips' too), CPU time of this process. The placeholder's part is timed inside the
pipeline (imgflow.worker.placeholder's two entry points, wrapped), so both figures come from the
same runs. Every case is measured ``BENCH_ROUNDS`` times (5), the cases interleaved, for
``BENCH_SECONDS`` (1) each; the figures are of the round with the median ratio, beside the
lowest ratio (other processes' work slows the placeholder's many small calls more than the
engine's long ones).

    uv run --frozen python -m bench.placeholders
"""

from __future__ import annotations

import os

os.environ.setdefault("VIPS_CONCURRENCY", "1")  # before pyvips starts its threads

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from bench import corpus
from imgflow.core.outputs import ThumbnailSpec
from imgflow.worker import pipeline, placeholder

SECONDS = float(os.environ.get("BENCH_SECONDS", "1"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
P = ParamSpec("P")
R = TypeVar("R")
CASES: list[tuple[str, list[dict[str, object]]]] = [
    ("jpeg1080", [{}]),  # the original contract's 100x100 JPEG: the plain JPEG lane
    ("jpeg1080", [{"width": 400, "height": 300, "format": "webp"}]),
    ("png1080", [{}]),
    ("webp1080", [{"width": 400, "height": 300, "format": "webp"}]),
    ("jpeg12mp", [{"width": 1600, "height": 1200}]),
    ("jpeg1080", [{"name": "s", "width": 200, "height": 150}, {"name": "m", "width": 800, "height": 600}]),
    ("jpeg1080", [{"blurhash": True}]),
    ("jpeg1080", [{"width": 400, "height": 300, "format": "webp", "blurhash": True}]),
]


@dataclass
class Timed:
    """Adds up the CPU that the calls of the functions it wraps take."""

    cpu_s: float = 0.0

    def wrap(self, make: Callable[P, R]) -> Callable[P, R]:
        def timed(*args: P.args, **kwargs: P.kwargs) -> R:
            start = time.thread_time()
            try:
                return make(*args, **kwargs)
            finally:
                self.cpu_s += time.thread_time() - start

        return timed


def measure(sources: list[bytes], specs: list[ThumbnailSpec]) -> tuple[float, float]:
    """CPU ms per job: the whole pipeline, and its placeholders' part."""
    timed = Timed()
    of_vips, of_pillow = placeholder.of_vips, placeholder.of_pillow
    placeholder.of_vips, placeholder.of_pillow = timed.wrap(of_vips), timed.wrap(of_pillow)
    try:

        def run(data: bytes) -> None:
            pipeline.make_thumbnails(data, specs, max_pixels=10**9, max_side=20_000, quality=85)

        run(sources[0])  # warm-up
        timed.cpu_s = 0.0
        runs, start = 0, time.process_time()
        for data in itertools.cycle(sources):
            run(data)
            runs += 1
            if time.process_time() - start >= SECONDS:
                break
        total = time.process_time() - start
    finally:
        placeholder.of_vips, placeholder.of_pillow = of_vips, of_pillow
    return total / runs * 1000, timed.cpu_s / runs * 1000


def main() -> None:
    corpus.ensure()
    sources = {subset: [image.path.read_bytes() for image in corpus.images(subset)] for subset, _ in CASES}
    rounds: list[list[tuple[float, float]]] = [[] for _ in CASES]
    for _ in range(ROUNDS):
        for i, (subset, options) in enumerate(CASES):
            rounds[i].append(measure(sources[subset], [ThumbnailSpec.model_validate(o) for o in options]))
    print(
        f"{'source':<9} {'outputs':<56} {'engine ms':>9} {'placeholders ms':>15} {'extra':>6} {'lowest':>6}"
    )
    for (subset, options), measured in zip(CASES, rounds, strict=True):
        # the extra: what placeholders add to the engine without them
        ratios = sorted((part / (total - part), total - part, part) for total, part in measured)
        ratio, engine, part = ratios[len(ratios) // 2]
        shown = "; ".join(", ".join(f"{k}={v}" for k, v in o.items()) or "100x100 jpeg" for o in options)
        print(f"{subset:<9} {shown:<56} {engine:9.2f} {part:15.3f} {ratio:6.1%} {ratios[0][0]:6.1%}")


if __name__ == "__main__":
    main()
