"""Peak memory of the worker's pipeline on the worst sources it accepts, at its concurrency.

For each worst shape the limits let through (IMGFLOW_MAX_PIXELS = 50 MP, IMGFLOW_MAX_SIDE = 16384:
the widest, the tallest and the squarest 50 MP image) and each heavy input kind (16-bit RGBA PNG,
plain and interlaced; 16-bit RGB TIFF; 8-bit JPEG, baseline and progressive; GIF; AVIF, 8-bit 4:2:0
and 12-bit 4:4:4 RGBA), a fresh process
(libvips' cache off, two malloc arenas, as the worker runs) makes the thumbnail with every fit and
output format. Twice: one job at a time (the peak of one job, next to the worker's estimate for it,
``imgflow.worker.memory``), then ``--concurrency`` at once drawing on the worker's memory budget
(``--budget-mb``) exactly as the worker does. Peak RSS is ``VmHWM`` minus the RSS before the
first job; the chart's worker memory limit must stay above the budget plus the process's own size.

    uv run --frozen python -m bench.studies.memory [--concurrency 2] [--budget-mb 640] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from imgflow.harness.images import make_source

SHAPES = {"widest": (16384, 3051), "tallest": (3051, 16384), "square": (7071, 7071)}
KINDS = (
    "png16-rgba",
    "png16-rgba-interlaced",
    "tiff16-rgb",
    "jpeg",
    "jpeg-progressive",
    "gif",
    "avif",
    "avif12-rgba-444",
)

CHILD = r"""
import ctypes, json, sys
import anyio
from imgflow.core.outputs import ThumbnailSpec
from imgflow.core.probe import configure_libvips, probe_buffer
from imgflow.worker.memory import MB, MemoryBudget, OverBudget, job_memory_bytes
from imgflow.worker.pipeline import make_thumbnail
ctypes.CDLL("libc.so.6").mallopt(-8, 2)
configure_libvips()
data = open(sys.argv[1], "rb").read()
concurrency, budget = int(sys.argv[2]), MemoryBudget(int(sys.argv[3]) * MB)
info = probe_buffer(data, max_pixels=50_000_000, max_side=16_384)
specs = [ThumbnailSpec.model_validate({"fit": f, "format": o, "width": 400, "height": 300})
         for f in ("cover", "contain", "inside", "fill") for o in ("jpeg", "png", "webp")]
limiter = anyio.CapacityLimiter(concurrency)
def hwm_kb():
    # VmHWM, not ru_maxrss: after fork + exec ru_maxrss still counts the parent's size
    status = open("/proc/self/status").read()
    return int(status.split("VmHWM:")[1].split()[0])
before = hwm_kb()
refused = 0
async def one(spec):
    global refused
    try:
        async with budget.hold(job_memory_bytes(info, [spec], len(data), quality=85)):
            await anyio.to_thread.run_sync(
                lambda: make_thumbnail(data, spec, max_pixels=50_000_000, max_side=16_384,
                                       quality=85, info=info),
                limiter=limiter)
    except OverBudget:
        refused += 1
async def main():
    async with anyio.create_task_group() as tg:
        for spec in specs:
            tg.start_soon(one, spec)
anyio.run(main)
peak = hwm_kb()
estimate = max(job_memory_bytes(info, [spec], len(data), quality=85) for spec in specs)
print(json.dumps({"before_mb": before / 1024, "peak_mb": peak / 1024, "estimate_mb": estimate / MB,
                  "refused": refused}))
"""


def measure(source: Path, concurrency: int, budget_mb: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(source), str(concurrency), str(budget_mb)],
        capture_output=True,
        text=True,
        check=True,
    )
    figures: dict[str, float] = json.loads(done.stdout)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--budget-mb", type=int, default=640)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    print(
        f"{'source':<22} {'kind':<22} {'size':>8} {'estimate':>9} {'one job':>8} {'together':>9}"
        "  (MB)  refused"
    )
    with tempfile.TemporaryDirectory(prefix="imgflow-memory-") as tmp:
        for shape, (width, height) in SHAPES.items():
            for kind in KINDS:
                source = Path(tmp) / f"{shape}-{kind}"
                make_source(kind, width, height, source)
                alone = measure(source, 1, args.budget_mb)
                together = measure(source, args.concurrency, args.budget_mb)
                row: dict[str, Any] = {
                    "shape": f"{shape} {width}x{height}",
                    "kind": kind,
                    "bytes": source.stat().st_size,
                    "estimate_mb": round(alone["estimate_mb"]),
                    "one_job_mb": round(alone["peak_mb"] - alone["before_mb"]),
                    "together_mb": round(together["peak_mb"] - together["before_mb"]),
                    "peak_mb": round(together["peak_mb"]),
                    "refused": int(together["refused"]),
                }
                rows.append(row)
                print(
                    f"{row['shape']:<22} {kind:<22} {row['bytes'] / 1e6:8.1f} {row['estimate_mb']:9d} "
                    f"{row['one_job_mb']:8d} {row['together_mb']:9d}        {row['refused']}/12",
                    flush=True,
                )
                source.unlink()
    worst = max(rows, key=lambda r: r["peak_mb"])
    under = [r for r in rows if r["one_job_mb"] > r["estimate_mb"]]
    print(
        f"worst: {worst['shape']} {worst['kind']}: process peak {worst['peak_mb']} MB at concurrency "
        f"{args.concurrency}, budget {args.budget_mb} MB; "
        f"estimate below the measured peak for {len(under)} source(s)"
    )
    if args.json:
        args.json.write_text(json.dumps({"concurrency": args.concurrency, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
