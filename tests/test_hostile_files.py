"""Hostile files (tests/hostile.py) cost the probe a bounded amount of CPU and memory, measured in a
child process against the probe of a normal image in the same run, and through the real API and
worker they are answered (accepted or refused) without taking a process down."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests import hostile

ROOT = Path(__file__).parent.parent
# Probe one file in a fresh process and print what it cost. The process first probes a normal
# image (loading libvips' modules), then caps its address space at what it holds plus
# argv[3] MB, so a probe that tries to hold more fails instead of taking the machine with it.
PROBE = r"""
import json, resource, sys
from imgflow.core.probe import ImageTooLarge, UnsupportedImage, probe_buffer
from tests import hostile, images

probe_buffer(images.jpeg(1920, 1080), max_pixels=50_000_000, max_side=16_384)
data = images.jpeg(1920, 1080) if sys.argv[1] == "normal" else hostile.BUILDERS[sys.argv[1]]()
size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
headroom = int(sys.argv[2]) * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (size + headroom, size + headroom))
before = resource.getrusage(resource.RUSAGE_SELF)
try:
    answer = repr(probe_buffer(data, max_pixels=50_000_000, max_side=16_384))
except (UnsupportedImage, ImageTooLarge) as exc:
    answer = f"{type(exc).__name__}: {exc}"
after = resource.getrusage(resource.RUSAGE_SELF)
cpu_ms = (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) * 1000
rss_mb = (after.ru_maxrss - before.ru_maxrss) / 1024
print(json.dumps({"cpu_ms": cpu_ms, "rss_mb": rss_mb, "answer": answer}))
"""


def probe_cost(name: str, *, headroom_mb: int = 512, timeout: float = 20.0) -> dict[str, object]:
    """What probing ``name`` (a builder in tests/hostile.py, or "normal") cost a child process."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE, name, str(headroom_mb)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert done.returncode == 0, f"{name}: the probe died ({done.returncode}): {done.stderr[-2000:]}"
    figures: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return figures


def test_issue_19_a_2_7_kb_avif_grid_chain_is_answered_within_512_mb() -> None:
    """Four grids, each made of 256 references to the next: a walk that keeps repeated items visits
    256**4 of them. Before the fix the probe filled memory at ~220 MB/s until it was killed."""
    data = hostile.grid_chain(levels=4, references=256)
    assert len(data) < 3000
    figures = probe_cost("heif-grid-chain-4", headroom_mb=512, timeout=20)
    assert str(figures["answer"]).startswith(("ImageInfo(format='avif'", "UndecodableImage")), figures
