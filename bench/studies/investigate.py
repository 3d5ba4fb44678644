"""Optional part of ``make bench`` (``bench/run.sh --investigate``): what would make the worker's
thumbnail step faster or leaner, measured on the same corpus in the same way as ``bench.engine``.

1. Variants of the step (``bench.variants``), one thread (``VIPS_CONCURRENCY=1``), with Pillow
   and sharp timed alongside as the bar to clear, and each variant's quality scored as in
   ``bench.quality``. ``as it is, cache off`` is the unchanged step with
   ``pyvips.cache_set_max(0)``.
2. The unchanged step and the two combinations in the worker's own setup (two threads, libvips'
   default threads per image).
3. Peak RSS of a worker-like process (two threads making thumbnails of every corpus image, read
   from disk job by job, three passes) with libvips' operation cache on and off, and with glibc's
   malloc arenas capped (``MALLOC_ARENA_MAX=2``).

    python -m bench.studies.investigate [--out bench/.results/investigate.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pyvips

from bench import corpus
from bench.engine import RUNNERS, Config, close_all, measure_all, python_runner, start_runners
from bench.engines import Source, imgflow
from bench.quality import Reference
from bench.system import status_kb
from bench.variants import LABELS, VARIANTS

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / ".results"
LABEL = 44

CONFIGS = (
    *(Config(f"v_{name}", LABELS[name], f"variant:{name}", ("v1",), 1, 1, "variant") for name in VARIANTS),
    Config("v_as_is_nocache", "as it is, cache off", "variant:as_is", ("v1nc",), 1, 1, "variant"),
    Config("pillow_1", "Pillow", "pillow", ("v1",), 1, 1, "peer"),
    Config("sharp_1", "sharp, 1 in flight", "sharp", ("sharp",), 1, 1, "peer"),
    Config("w_as_is", "as it is", "variant:as_is", ("vd",), 2, 2, "worker"),
    Config("w_neutral", LABELS["neutral"], "variant:neutral", ("vd",), 2, 2, "worker"),
    Config("w_sharp_like", LABELS["sharp_like"], "variant:sharp_like", ("vd",), 2, 2, "worker"),
    Config("pillow_2p", "Pillow, 2 processes", "pillow", ("v1", "v1b"), 1, 2, "peer"),
    Config("sharp_2", "sharp, 2 in flight", "sharp", ("sharp",), 2, 2, "peer"),
)
MEMORY_SETUPS = {
    "as it is": {},
    "cache off (pyvips.cache_set_max(0))": {"BENCH_VIPS_CACHE_MAX": "0"},
    "MALLOC_ARENA_MAX=2": {"MALLOC_ARENA_MAX": "2"},
    "cache off + MALLOC_ARENA_MAX=2": {"BENCH_VIPS_CACHE_MAX": "0", "MALLOC_ARENA_MAX": "2"},
    "VIPS_CONCURRENCY=1": {"VIPS_CONCURRENCY": "1"},
    "all three": {"BENCH_VIPS_CACHE_MAX": "0", "MALLOC_ARENA_MAX": "2", "VIPS_CONCURRENCY": "1"},
}


def variant_quality() -> dict[str, dict[str, dict[str, float]]]:
    out: dict[str, dict[str, dict[str, float]]] = {}
    for subset in corpus.SUBSETS:
        jpeg: dict[str, list[float]] = {name: [] for name in VARIANTS}
        pixels: dict[str, list[float]] = {name: [] for name in VARIANTS}
        for image in corpus.images(subset.key):
            ref = Reference(image)
            source = Source.of(image.path.read_bytes())
            for name, variant in VARIANTS.items():
                jpeg[name].append(ref.psnr(variant(source)))
                pixels[name].append(ref.psnr(variant(source, lossless=True)))
        out[subset.key] = {
            name: {"psnr_jpeg": statistics.fmean(jpeg[name]), "psnr_pixels": statistics.fmean(pixels[name])}
            for name in VARIANTS
        }
    return out


def memory_child() -> None:
    """The worker-like load: prints this process's peak and final RSS (kB) as JSON."""
    if cache_max := os.environ.get("BENCH_VIPS_CACHE_MAX"):
        pyvips.cache_set_max(int(cache_max))
    paths = [image.path for image in corpus.images()] * 3
    lock = threading.Lock()

    def work() -> None:
        while True:
            with lock:
                if not paths:
                    return
                path = paths.pop()
            imgflow(Source(path.read_bytes(), {}))

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pid = os.getpid()
    print(json.dumps({"peak_kb": status_kb(pid, "VmHWM"), "end_kb": status_kb(pid, "VmRSS")}))


def memory() -> dict[str, dict[str, int]]:
    out = {}
    for name, extra in MEMORY_SETUPS.items():
        _, env = python_runner(**extra)  # VIPS_CONCURRENCY unset unless given: as in the worker
        argv = [sys.executable, "-m", "bench.studies.investigate", "--memory-child"]
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def print_tables(result: dict[str, Any]) -> None:
    subsets = {s.key: s.title for s in corpus.SUBSETS}
    figures, quality = result["figures"], result["quality"]
    head = "".join(f"{t:>24s}" for t in subsets.values())
    print(
        f"\nInvestigation: variants of the thumbnail step, 1 thread. Per subset: best images/s of "
        f"{result['rounds']} rounds,\nCPU ms per image, and PSNR (dB) of the delivered JPEG / of the pixels "
        "(bench/quality.py)"
    )
    print(f"{'':{LABEL}s}{head}")
    for config in CONFIGS:
        if config.cores != 1:
            continue
        name = config.engine.removeprefix("variant:")
        cells = ""
        for key in subsets:
            f = figures[key][config.key]
            cell = f"{f['best']:6.1f}{f['cpu_ms']:6.1f}ms"
            if config.kind == "variant" and config.key != "v_as_is_nocache":
                q = quality[key][name]
                cell += f" {q['psnr_jpeg']:5.2f}/{q['psnr_pixels']:4.1f}"
            cells += f"{cell:>24s}"
        print(f"  {config.label:{LABEL - 2}s}{cells}")
    print(
        "\nInvestigation: the same in the worker's setup (2 threads, libvips' default threads), best images/s"
    )
    print(f"{'':{LABEL}s}{head}")
    for config in CONFIGS:
        if config.cores == 2:
            cells = "".join(f"{figures[key][config.key]['best']:24.1f}" for key in subsets)
            print(f"  {config.label:{LABEL - 2}s}{cells}")
    print(
        "\nInvestigation: peak RSS of a worker-like process (2 threads, libvips default threads unless "
        "said, 3 passes over the corpus)"
    )
    for name, rss in result["memory"].items():
        print(
            f"  {name:{LABEL - 2}s}peak {rss['peak_kb'] / 1024:6.0f} MB, "
            f"at the end {rss['end_kb'] / 1024:6.0f} MB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "investigate.json")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child()
        return
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    seconds = float(os.environ.get("BENCH_SECONDS", "0.5"))
    corpus.ensure()
    logs = args.out.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    specs = {**RUNNERS, "v1nc": python_runner(VIPS_CONCURRENCY="1", BENCH_VIPS_CACHE_MAX="0")}
    runners = start_runners(specs, logs)
    try:
        figures = measure_all(runners, CONFIGS, rounds, seconds, "investigate")
    finally:
        close_all(runners)
    result = {
        "rounds": rounds,
        "seconds": seconds,
        "figures": figures,
        "quality": variant_quality(),
        "memory": memory(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print_tables(result)


if __name__ == "__main__":
    main()
