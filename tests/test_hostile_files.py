"""Hostile files (tests/hostile.py) cost the probe a bounded amount of CPU and memory, measured in a
child process against the probe of a normal image in the same run, and through the real API and
worker they are answered (accepted or refused) without taking a process down."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import pyvips

from imgflow.core.pages import TooManyPages, check_pages
from imgflow.core.probe import MAX_PAGES, ImageTooLarge, probe_buffer
from tests import hostile, images

ROOT = Path(__file__).parent.parent
# Probe one file (argv[1]) in a fresh process, from its path as the API does and from its bytes as
# the worker does, and print what that cost. The process first probes a normal image (loading
# libvips' modules), then caps its address space at what it holds plus argv[2] MB, so a probe that
# tries to hold more fails instead of taking the machine with it.
PROBE = r"""
import json, resource, sys
from pathlib import Path
from imgflow.core.probe import ImageTooLarge, UnsupportedImage, probe_buffer, probe_file
from tests import images

probe_buffer(images.jpeg(64, 64), max_pixels=50_000_000, max_side=16_384)
path = Path(sys.argv[1])
data = path.read_bytes()
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
headroom = int(sys.argv[2]) * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + headroom, size + headroom))
answers = []
before = resource.getrusage(resource.RUSAGE_SELF)
for probe in (lambda: probe_file(path, max_pixels=50_000_000, max_side=16_384),
              lambda: probe_buffer(data, max_pixels=50_000_000, max_side=16_384)):
    try:
        answers.append(repr(probe()))
    except (UnsupportedImage, ImageTooLarge) as exc:
        answers.append(f"{type(exc).__name__}: {exc}")
after = resource.getrusage(resource.RUSAGE_SELF)
cpu_ms = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000 / 2
rss_mb = (after.ru_maxrss - before.ru_maxrss) / 1024
print(json.dumps({"cpu_ms": cpu_ms, "rss_mb": rss_mb, "answers": answers}))
"""
ANSWERS = ("ImageInfo(", "UnsupportedImage: ", "UndecodableImage: ", "ImageTooLarge: ")
# a refusal by libheif, libtiff, ... quoted in the answer would do too: nothing here is Python's own
PYTHON_WORDS = ("Traceback", "Error:", "object has no attribute")


@dataclass(frozen=True)
class Cost:
    cpu_ms: float  # per probe, the mean of the two
    rss_mb: float  # growth of the peak resident memory over both
    answers: list[str]


def probe_cost(data: bytes, tmp: Path, *, headroom_mb: int = 512, timeout: float = 20.0) -> Cost:
    """What probing ``data`` cost a fresh child process."""
    path = tmp / f"probe-{uuid.uuid4().hex}"
    path.write_bytes(data)
    try:
        done = subprocess.run(
            [sys.executable, "-c", PROBE, str(path), str(headroom_mb)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )
    finally:
        path.unlink()
    assert done.returncode == 0, f"the probe died ({done.returncode}): {done.stderr[-2000:]}"
    figures = json.loads(done.stdout.splitlines()[-1])
    return Cost(figures["cpu_ms"], figures["rss_mb"], figures["answers"])


@pytest.fixture(scope="module")
def normal(tmp_path_factory: pytest.TempPathFactory) -> Cost:
    """The probe of a normal 12 MP JPEG photo, in the same kind of process."""
    return probe_cost(images.jpeg(4000, 3000), tmp_path_factory.mktemp("normal"))


def check_bounded(cost: Cost, normal: Cost, what: str) -> None:
    for answer in cost.answers:
        assert answer.startswith(ANSWERS), (what, answer)
        assert not any(word in answer for word in PYTHON_WORDS), (what, answer)
    assert cost.cpu_ms <= max(50.0, 20 * normal.cpu_ms), (what, cost, normal)
    assert cost.rss_mb <= normal.rss_mb + 32, (what, cost, normal)


def test_issue_19_a_2_7_kb_avif_grid_chain_is_answered_within_512_mb(tmp_path: Path) -> None:
    """Four grids, each made of 256 references to the next: a walk that keeps repeated items visits
    256**4 of them. Before the fix the probe filled memory at ~220 MB/s until it was killed."""
    data = hostile.grid_chain(levels=4, references=256)
    assert len(data) < 2800
    cost = probe_cost(data, tmp_path, headroom_mb=512, timeout=20)
    assert all(answer.startswith(("ImageInfo(format='avif'", "UndecodableImage")) for answer in cost.answers)


@pytest.mark.parametrize("name", list(hostile.BUILDERS))
def test_a_hostile_file_costs_the_probe_little(name: str, tmp_path: Path, normal: Cost) -> None:
    check_bounded(probe_cost(hostile.BUILDERS[name](), tmp_path), normal, name)


def multi_page(pages: int) -> pyvips.Image:
    frames = [pyvips.Image.black(8, 8).new_from_image([40 * i % 256]).cast("uchar") for i in range(pages)]
    strip = pyvips.Image.arrayjoin(frames, across=1).copy()
    strip.set_type(pyvips.GValue.gint_type, "page-height", 8)
    strip.set_type(pyvips.GValue.array_int_type, "delay", [40] * pages)
    return strip


@pytest.mark.parametrize(
    "save",
    [
        lambda image: image.tiffsave_buffer(),
        lambda image: image.tiffsave_buffer(bigtiff=True),
        lambda image: image.webpsave_buffer(lossless=True),
    ],
    ids=["tiff", "bigtiff", "webp"],
)
def test_pages_are_counted_as_libvips_counts_them(save: Callable[[pyvips.Image], bytes]) -> None:
    data = bytes(save(multi_page(5)))
    assert probe_buffer(data, max_pixels=10**6, max_side=1000).pages == 5
    check_pages(data, 5)
    with pytest.raises(TooManyPages):
        check_pages(data, 4)


@pytest.mark.parametrize("make", [hostile.tiff_chain, hostile.webp_frames], ids=["tiff", "webp"])
def test_a_file_of_more_than_max_pages_is_refused_before_libvips_counts_them(
    make: Callable[[int], bytes],
) -> None:
    assert probe_buffer(make(MAX_PAGES), max_pixels=10**6, max_side=1000).pages == MAX_PAGES
    with pytest.raises(ImageTooLarge, match=f"more than {MAX_PAGES:,}"):
        probe_buffer(make(MAX_PAGES + 1), max_pixels=10**6, max_side=1000)
