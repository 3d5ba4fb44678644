"""Peak memory of the worker's pipeline on the worst sources it accepts, at its concurrency.

For each worst shape the limits let through (IMGFLOW_MAX_PIXELS = 50 MP, IMGFLOW_MAX_SIDE = 16384:
the widest, the tallest and the squarest 50 MP image) and each heavy input kind (16-bit RGBA PNG,
16-bit RGB TIFF, 8-bit JPEG), a fresh process (libvips' cache off, two malloc arenas, as the worker
runs) makes the thumbnail with every fit and output format, ``--concurrency`` of them at once in
threads, and reports its peak RSS (``ru_maxrss``) minus the RSS before the first job. The chart's
worker memory limit should stay above concurrency x the worst figure plus the process's own size.

    uv run --frozen python -m bench.memory [--concurrency 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SHAPES = {"widest": (16384, 3051), "tallest": (3051, 16384), "square": (7071, 7071)}
KINDS = ("png16-rgba", "tiff16-rgb", "jpeg")

CHILD = r"""
import ctypes, json, resource, sys
from concurrent.futures import ThreadPoolExecutor
import pyvips
from imgflow.core.jobs import ThumbnailSpec
from imgflow.core.probe import configure_libvips
from imgflow.worker.pipeline import make_thumbnail
ctypes.CDLL("libc.so.6").mallopt(-8, 2)
configure_libvips()
data = open(sys.argv[1], "rb").read()
concurrency = int(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
specs = [ThumbnailSpec.model_validate({"fit": f, "format": o, "width": 400, "height": 300})
         for f in ("cover", "contain", "inside", "fill") for o in ("jpeg", "png", "webp")]
def one(spec):
    make_thumbnail(data, spec, max_pixels=50_000_000, max_side=16_384, quality=85)
with ThreadPoolExecutor(concurrency) as pool:
    list(pool.map(one, specs))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before_mb": before / 1024, "peak_mb": peak / 1024}))
"""


def make_source(kind: str, width: int, height: int, path: Path) -> None:
    import pyvips

    base = pyvips.Image.xyz(width, height)[0].linear(200 / width, 20).cast("uchar")
    rgb = base.bandjoin([base.linear(0.5, 30).cast("uchar"), base.linear(-0.5, 230).cast("uchar")])
    if kind == "png16-rgba":
        image = (rgb.bandjoin(base).cast("ushort") * 257).copy(interpretation="rgb16")
        image.pngsave(str(path), bitdepth=16, compression=1)
    elif kind == "tiff16-rgb":
        (rgb.cast("ushort") * 257).copy(interpretation="rgb16").tiffsave(str(path), compression="deflate")
    else:
        rgb.copy(interpretation="srgb").jpegsave(str(path), Q=85)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="imgflow-memory-") as tmp:
        for shape, (width, height) in SHAPES.items():
            for kind in KINDS:
                source = Path(tmp) / f"{shape}-{kind}"
                make_source(kind, width, height, source)
                done = subprocess.run(
                    [sys.executable, "-c", CHILD, str(source), str(args.concurrency)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                figures = json.loads(done.stdout)
                row = {
                    "shape": f"{shape} {width}x{height}",
                    "kind": kind,
                    "bytes": source.stat().st_size,
                    "peak_mb": round(figures["peak_mb"]),
                    "jobs_mb": round(figures["peak_mb"] - figures["before_mb"]),
                }
                rows.append(row)
                print(
                    f"{row['shape']:<22} {kind:<11} {row['bytes'] / 1e6:7.1f} MB source  "
                    f"peak RSS {row['peak_mb']:5d} MB  (+{row['jobs_mb']} MB for the jobs)",
                    flush=True,
                )
    worst = max(rows, key=lambda r: r["peak_mb"])
    print(f"worst: {worst['shape']} {worst['kind']}: {worst['peak_mb']} MB at concurrency {args.concurrency}")
    if args.json:
        args.json.write_text(json.dumps({"concurrency": args.concurrency, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
