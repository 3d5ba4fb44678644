"""What several outputs of one upload cost against one (issue 12: 3 variants at most 1.6x one).

For each subset of the corpus, on one thread, the time per image of:

- ``thumbnail``: the default job, one 100x100 JPEG (the baseline of every ratio);
- ``largest``: the largest of the three variants alone (800x600 WebP);
- ``3 variants``: a 100x100 JPEG, a 400x300 WebP and an 800x600 WebP from one decode
  (``make_thumbnails``, as a job with ``variants`` runs them);
- ``3 jobs``: the same three made by three separate jobs (three decodes);
- ``vips thumbnail``: libvips' own ``thumbnail_buffer`` for the 100x100, the engine's floor.

Best of ``--rounds`` rounds, each cycling through the subset's images for ``--seconds``.

    uv run --frozen python -m bench.outputs
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TypedDict

import pyvips

from bench import corpus
from imgflow.core.outputs import Fit, OutputFormat, ThumbnailSpec
from imgflow.core.probe import configure_libvips
from imgflow.worker.pipeline import make_thumbnail, make_thumbnails


class Limits(TypedDict):
    max_pixels: int
    max_side: int
    quality: int


LIMITS = Limits(max_pixels=50_000_000, max_side=16_384, quality=85)
THUMB = ThumbnailSpec(width=100, height=100, fit=Fit.cover, format=OutputFormat.jpeg)
VARIANTS = [
    THUMB.model_copy(update={"name": "thumb"}),
    ThumbnailSpec(name="card", width=400, height=300, format=OutputFormat.webp),
    ThumbnailSpec(name="hero", width=800, height=600, format=OutputFormat.webp),
]


def per_image(run: Callable[[bytes], object], sources: list[bytes], seconds: float, rounds: int) -> float:
    """Seconds per image, best of ``rounds``."""
    best = float("inf")
    for _ in range(rounds):
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            run(sources[done % len(sources)])
            done += 1
        best = min(best, (time.perf_counter() - started) / done)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    configure_libvips()
    pyvips.concurrency_set(1)  # one thread: the cost of the work, not of the machine's cores
    corpus.ensure()
    runs: dict[str, Callable[[bytes], object]] = {
        "thumbnail": lambda data: make_thumbnail(data, THUMB, **LIMITS),
        "largest": lambda data: make_thumbnail(data, VARIANTS[-1], **LIMITS),
        "3 variants": lambda data: make_thumbnails(data, VARIANTS, **LIMITS),
        "3 jobs": lambda data: [make_thumbnail(data, spec, **LIMITS) for spec in VARIANTS],
        "vips thumbnail": lambda data: pyvips.Image.thumbnail_buffer(
            data, 100, height=100, crop="centre"
        ).jpegsave_buffer(Q=85, optimize_coding=True, keep="none"),
    }
    print(f"one thread, best of {args.rounds} x {args.seconds:g} s; ms per image (x the default thumbnail)")
    print(f"{'subset':<12}" + "".join(f"{name:>22}" for name in runs) + f"{'3 variants / largest':>24}")
    for subset in corpus.SUBSETS:
        sources = [image.path.read_bytes() for image in corpus.images(subset.key)]
        times = {name: per_image(run, sources, args.seconds, args.rounds) for name, run in runs.items()}
        base = times["thumbnail"]
        cells = "".join(f"{t * 1000:>13.1f} (x{t / base:4.2f})" for t in times.values())
        print(f"{subset.key:<12}{cells}{times['3 variants'] / times['largest']:>24.2f}")


if __name__ == "__main__":
    main()
