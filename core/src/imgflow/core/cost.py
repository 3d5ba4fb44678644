"""A job's cost, known at the door: the worker CPU it is expected to take, in milliseconds, estimated
from the source's header and the outputs asked for. The scheduler shares worker time by it
(imgflow.core.schedule) and the API refuses a job above ``max_job_cost`` (``too_costly``).

    cost = BASE + decode + sum over outputs of pixels x frames x format weight x filters
           (+ smart crop: an analysis of the decoded image)

An output's pixels are those the worker makes: no more than the source's unless it asks to
``enlarge`` (imgflow.core.outputs.output_size).

The weights are calibrated against the worker's measured CPU per job (``python -m bench.cost``;
the figures are in bench/README.md): one core, libvips' own threads at one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from imgflow.core.outputs import SMART, Fit, OutputFormat, ThumbnailSpec, output_size

BASE_MS = 2.0  # reading the job, storing the outputs' records: per job whatever its size
DECODE_MS_PER_MPX = 4.5  # per megapixel of source (JPEG shrinks on load; the others cost more)
SMART_MS_PER_MPX = 5.0  # the attention or entropy analysis, per megapixel of source
FILTER_FACTOR = 0.25  # each of blur, sharpen, pixelate adds a quarter of the output's own cost
# resizing and encoding one megapixel of output, per format
FORMAT_MS_PER_MPX: dict[OutputFormat, float] = {
    OutputFormat.jpeg: 20.0,
    OutputFormat.png: 55.0,
    OutputFormat.webp: 135.0,
    OutputFormat.avif: 3800.0,
    OutputFormat.gif: 60.0,
}
MPX = 1_000_000


@dataclass(frozen=True)
class Source:
    """What the header says of the source (as displayed): or a guess when the source is a URL."""

    width: int
    height: int
    format: str = "jpeg"
    pages: int = 1


# a source not seen at the door (a URL an ImageJob names): costed as a 12-megapixel photo
UNSEEN_SOURCE = Source(4000, 3000)


@dataclass(frozen=True)
class Part:
    what: str  # "decoding the source", "variant 'large' (4096x4096 avif)"
    ms: float


def parts(specs: Sequence[ThumbnailSpec], source: Source) -> list[Part]:
    """The cost of each part of the job, largest contributors named."""
    animated = any(spec.animates(source.format, source.pages) for spec in specs)
    frames = source.pages if animated else 1
    source_mpx = source.width * source.height / MPX
    found = [Part("the source's decoding", DECODE_MS_PER_MPX * source_mpx * frames)]
    for index, spec in enumerate(specs):
        width, height = output_size(spec, (source.width, source.height))
        filters = sum(1 for f in (spec.blur, spec.sharpen, spec.pixelate) if f is not None)
        own = FORMAT_MS_PER_MPX[spec.format] * width * height / MPX * (1 + FILTER_FACTOR * filters)
        if spec.animates(source.format, source.pages):
            own *= source.pages
        if spec.fit is Fit.cover and spec.gravity in SMART:
            own += SMART_MS_PER_MPX * source_mpx
        name = f"variant {spec.name!r}" if spec.name else f"output {index + 1}"
        found.append(Part(f"{name} ({width}x{height} {spec.format.value})", own))
    return found


def estimate(specs: Sequence[ThumbnailSpec], source: Source) -> int:
    """The job's cost in ms of worker CPU (at least 1)."""
    return max(1, round(BASE_MS + sum(part.ms for part in parts(specs, source))))


def too_costly(
    specs: Sequence[ThumbnailSpec], source: Source, limit: int, key_limit: int | None = None
) -> str | None:
    """Why the job costs too much, naming what to reduce; None if it is within ``limit`` (the
    service's) and ``key_limit`` (the API key's own, if it has one)."""
    cost = estimate(specs, source)
    allowed, setting = limit, "IMGFLOW_MAX_JOB_COST"
    if key_limit is not None and key_limit < limit:
        allowed, setting = key_limit, "this API key's limits.maxJobCost"
    if cost <= allowed:
        return None
    largest = max(parts(specs, source), key=lambda part: part.ms)
    return (
        f"This job's estimated cost is {cost:,} ms of worker CPU, more than the {allowed:,} allowed per "
        f"job ({setting}). Most of it is {largest.what}: reduce its size, choose a cheaper "
        "format (jpeg before webp before avif), fewer variants or frames, or split the job."
    )
