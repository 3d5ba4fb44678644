"""Engine part of ``make bench``: the worker's thumbnail step against libvips' own thumbnail, Pillow
and sharp, and against decode-only floors, per corpus subset, on one core and on two.

Every figure is images/s of the same thumbnail (100x100 cover, JPEG q85), measured in this run.
The timing happens in long-lived child processes (``bench.runner`` for the Python engines,
``bench/sharp.mjs`` for sharp), so libvips' threads per image are set per process with
``VIPS_CONCURRENCY`` and two-process runs are two real processes. Each measurement runs for
``BENCH_SECONDS`` (default 0.5); the whole set is repeated ``BENCH_ROUNDS`` times (default 5),
interleaved and in a rotating order so the machine's other work falls on every engine alike.
The figure is the best round (as ``timeit`` advises: slower rounds are other processes'
interference, not the engine's), printed with the median beside it; CPU time per image, which
interference inflates far less, is the cross-check. Quality (``bench.quality``) is scored once per
engine and image.

    python -m bench.engine [--out bench/.results/engine.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import PIL
import pyvips

from bench import corpus
from bench.engines import THUMBNAILERS, Source
from bench.quality import Reference
from bench.system import Usage, cpu_model, cpu_seconds

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / ".results"
LEAD_S = 0.2  # from sending a run to its common start: time for each thread's warm-up image


@dataclass(frozen=True)
class Config:
    key: str
    label: str
    engine: str
    processes: tuple[str, ...]  # runner names, one per process taking part
    threads: int  # per process (for sharp: images in flight)
    cores: int  # which comparison the row belongs to
    # imgflow | before (imgflow before the last engine change: libvips steps for every job) |
    # libvips | peer | floor
    kind: str


CONFIGS = (
    Config("imgflow_1t", "imgflow make_thumbnail, 1 thread", "imgflow", ("v1",), 1, 1, "imgflow"),
    Config(
        "before_1t", "imgflow before (libvips steps), 1 thread", "imgflow_before", ("v1",), 1, 1, "before"
    ),
    Config("vips_1t", "libvips thumbnail_buffer", "vips_thumbnail", ("v1",), 1, 1, "libvips"),
    Config("pillow_1", "Pillow", "pillow", ("v1",), 1, 1, "peer"),
    Config("sharp_1", "sharp, 1 in flight", "sharp", ("sharp",), 1, 1, "peer"),
    Config(
        "floor_shrunk", "floor: libvips decode, imgflow's shrink", "decode_shrunk", ("v1",), 1, 1, "floor"
    ),
    Config("floor_full", "floor: libvips decode, full size", "decode_full", ("v1",), 1, 1, "floor"),
    Config("floor_pillow", "floor: Pillow decode (draft)", "pillow_decode", ("v1",), 1, 1, "floor"),
    Config("floor_worker", "floor: imgflow's decoder (TurboJPEG)", "worker_decode", ("v1",), 1, 1, "floor"),
    Config("imgflow_2t", "imgflow, 2 threads in 1 process", "imgflow", ("v1",), 2, 2, "imgflow"),
    Config("imgflow_2p", "imgflow, 2 processes x 1 thread", "imgflow", ("v1", "v1b"), 1, 2, "imgflow"),
    Config("imgflow_dc1", "imgflow, 1 thread, libvips default threads", "imgflow", ("vd",), 1, 2, "imgflow"),
    Config("imgflow_dc2", "imgflow, 2 threads, default threads =worker", "imgflow", ("vd",), 2, 2, "imgflow"),
    Config("before_dc2", "imgflow before, worker's setup", "imgflow_before", ("vd",), 2, 2, "before"),
    Config(
        "vips_2p", "libvips thumbnail_buffer, 2 processes", "vips_thumbnail", ("v1", "v1b"), 1, 2, "libvips"
    ),
    Config("pillow_2p", "Pillow, 2 processes", "pillow", ("v1", "v1b"), 1, 2, "peer"),
    Config("sharp_2", "sharp, 2 in flight", "sharp", ("sharp",), 2, 2, "peer"),
)
# The worker's production setup: IMGFLOW_WORKER_CONCURRENCY=2 jobs in one process, VIPS_CONCURRENCY
# unset. The summary's 2-core ratios and the end-to-end ratio use this one.
WORKER_CONFIG = "imgflow_dc2"
IMGFLOW_2CORE = ("imgflow_2t", "imgflow_2p", "imgflow_dc2")
PEERS_1CORE = ("pillow_1", "sharp_1")
PEERS_2CORE = ("pillow_2p", "sharp_2")
QUALITY_ENGINES = ("imgflow", "imgflow_before", "vips_thumbnail", "pillow", "sharp")
ENGINE_NAMES = {
    "imgflow": "imgflow",
    "imgflow_before": "imgflow before",
    "vips_thumbnail": "libvips thumbnail_buffer",
    "pillow": "Pillow",
    "sharp": "sharp",
}


class Runner:
    """A child timing process speaking JSON lines (see ``bench.runner``)."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        self.info: dict[str, Any] = {}  # the answer to "load": versions, libvips threads
        with log.open("wb") as err:
            self.process = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env, cwd=ROOT, text=True
            )

    def send(self, request: dict[str, Any]) -> None:
        stdin: IO[str] = self.process.stdin  # type: ignore[assignment]
        stdin.write(json.dumps(request) + "\n")
        stdin.flush()

    def receive(self) -> dict[str, Any]:
        stdout: IO[str] = self.process.stdout  # type: ignore[assignment]
        line = stdout.readline()
        if not line:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"runner {self.name} exited ({self.process.poll()}):\n{tail}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"runner {self.name}: {answer['error']}")
        return answer

    def ask(self, request: dict[str, Any]) -> dict[str, Any]:
        self.send(request)
        return self.receive()

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid) if self.process.poll() is None else 0.0

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.send({"op": "quit"})
                self.process.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()


def python_runner(**env: str) -> tuple[list[str], dict[str, str]]:
    """A ``bench.runner`` with ``env`` on top of ours, minus any VIPS_CONCURRENCY we were given."""
    base = {k: v for k, v in os.environ.items() if k != "VIPS_CONCURRENCY"}
    return [sys.executable, "-m", "bench.runner"], {**base, **env}


RUNNERS = {
    "v1": python_runner(VIPS_CONCURRENCY="1"),
    "v1b": python_runner(VIPS_CONCURRENCY="1"),
    "vd": python_runner(),  # libvips' default: as many threads per image as cores
    "sharp": (["node", str(BENCH / "sharp.mjs")], dict(os.environ)),
}


def start_runners(specs: dict[str, tuple[list[str], dict[str, str]]], logs: Path) -> dict[str, Runner]:
    runners: dict[str, Runner] = {}
    try:
        for name, (argv, env) in specs.items():
            runners[name] = Runner(name, argv, env, logs / f"runner-{name}.log")
        files = {s.key: [str(i.path) for i in corpus.images(s.key)] for s in corpus.SUBSETS}
        for runner in runners.values():
            runner.send({"op": "load", "subsets": files})
        for runner in runners.values():
            runner.info = runner.receive()
    except BaseException:
        close_all(runners)
        raise
    return runners


def close_all(runners: dict[str, Runner]) -> None:
    for runner in runners.values():
        runner.close()


def measure(runners: dict[str, Runner], config: Config, subset: str, seconds: float) -> dict[str, float]:
    request = {
        "op": "run",
        "engine": config.engine,
        "subset": subset,
        "threads": config.threads,
        "start_at": time.time() + LEAD_S,
        "seconds": seconds,
    }
    involved = [runners[name] for name in config.processes]
    for runner in involved:
        runner.send(request)
    answers = [runner.receive() for runner in involved]
    return {key: sum(float(a[key]) for a in answers) for key in ("rate", "images", "cpu")}


def measure_all(
    runners: dict[str, Runner], configs: Sequence[Config], rounds: int, seconds: float, what: str
) -> dict[str, dict[str, dict[str, Any]]]:
    """Every config on every subset, ``rounds`` times, interleaved; summarised per subset and config."""
    samples: dict[str, dict[str, list[dict[str, float]]]] = {
        s.key: {c.key: [] for c in configs} for s in corpus.SUBSETS
    }
    started = time.monotonic()
    for r in range(rounds):
        for n, subset in enumerate(corpus.SUBSETS):
            shift = (r * 5 + n) % len(configs)
            for config in [*configs[shift:], *configs[:shift]]:
                samples[subset.key][config.key].append(measure(runners, config, subset.key, seconds))
        print(f"{what}: round {r + 1}/{rounds} done ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    return {s: {c: summarise(v) for c, v in by_config.items()} for s, by_config in samples.items()}


def summarise(samples: list[dict[str, float]]) -> dict[str, Any]:
    rates = [s["rate"] for s in samples]
    images = sum(s["images"] for s in samples)
    return {
        "best": max(rates),
        "median": statistics.median(rates),
        "cpu_ms": 1000 * sum(s["cpu"] for s in samples) / images if images else 0.0,
        "rates": rates,
    }


def score_quality(sharp: Runner, subset: corpus.Subset) -> dict[str, dict[str, float]]:
    """Mean (and worst) PSNR of each engine's JPEG and of its pixels before encoding; mean JPEG size."""
    scores: dict[str, dict[str, list[float]]] = {
        e: {"psnr_jpeg": [], "psnr_pixels": [], "bytes": []} for e in QUALITY_ENGINES
    }
    with tempfile.TemporaryDirectory(prefix="imgflow-bench-") as tmp:
        for lossless in (False, True):
            sharp.ask({"op": "thumbs", "subset": subset.key, "outdir": tmp, "lossless": lossless})
        for image in corpus.images(subset.key):
            ref = Reference(image)
            source = Source.of(image.path.read_bytes())
            for engine in QUALITY_ENGINES:
                if engine == "sharp":
                    jpeg = (Path(tmp) / f"{image.path.name}.jpg").read_bytes()
                    pixels = (Path(tmp) / f"{image.path.name}.png").read_bytes()
                else:
                    jpeg = THUMBNAILERS[engine](source)
                    pixels = THUMBNAILERS[engine](source, lossless=True)
                scores[engine]["psnr_jpeg"].append(ref.psnr(jpeg))
                scores[engine]["psnr_pixels"].append(ref.psnr(pixels))
                scores[engine]["bytes"].append(len(jpeg))
    return {
        engine: {
            "psnr_jpeg": statistics.fmean(s["psnr_jpeg"]),
            "psnr_jpeg_min": min(s["psnr_jpeg"]),
            "psnr_pixels": statistics.fmean(s["psnr_pixels"]),
            "bytes": statistics.fmean(s["bytes"]),
        }
        for engine, s in scores.items()
    }


def node_version() -> str:
    return subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout.strip()


# ----------------------------------------------------------------------------------------- output

LABEL = 46


def subset_header(subsets: dict[str, Any], width: int) -> str:
    return "".join(f"{s['title']:>{width}s}" for s in subsets.values())


def print_tables(result: dict[str, Any]) -> None:
    meta, subsets = result["meta"], result["subsets"]
    print(
        f"\nEngine part: {meta['cpus']} x {meta['cpu']}; libvips {meta['libvips']} "
        f"(pyvips {meta['pyvips']}), Pillow {meta['pillow']}, sharp {meta['sharp']} "
        f"(its own libvips {meta['sharp_libvips']}), node {meta['node']}.\n"
        f"libvips' default threads per image here: {meta['vips_default_concurrency']}. "
        f"Machine: 1-min load average {meta['loadavg_before']:.1f} at the start; other processes used "
        f"{100 * meta['others_share']:.0f}% of the CPU while the timings ran."
    )
    print(
        f"\nEngine: thumbnails/s (100x100 cover, JPEG q85); best / median of {meta['rounds']} rounds of "
        f"{meta['seconds']:g} s"
    )
    print(f"{'':{LABEL}s}{subset_header(subsets, 16)}")
    for cores in (1, 2):
        print(f"{cores} core{'s' if cores > 1 else ''}:")
        for config in CONFIGS:
            if config.cores == cores:
                cells = "".join(
                    f"{s['configs'][config.key]['best']:9.1f} /{s['configs'][config.key]['median']:5.0f}"
                    for s in subsets.values()
                )
                print(f"  {config.label:{LABEL - 2}s}{cells}")

    print("\nEngine: CPU ms per thumbnail (every thread of the process(es), all rounds)")
    print(f"{'':{LABEL}s}{subset_header(subsets, 16)}")
    for config in CONFIGS:
        cells = "".join(f"{s['configs'][config.key]['cpu_ms']:16.1f}" for s in subsets.values())
        print(f"  {config.label:{LABEL - 2}s}{cells}")

    print(
        "\nQuality: PSNR (dB) against a full-decode lanczos3 reference, mean over the subset: the "
        "delivered JPEG q85 /\nthe same pixels before encoding (above ~45 dB, differences are invisible); "
        "mean JPEG size"
    )
    print(f"{'':26s}{subset_header(subsets, 23)}")
    for engine in QUALITY_ENGINES:
        cells = "".join(
            f"{s['quality'][engine]['psnr_jpeg']:9.2f} /{s['quality'][engine]['psnr_pixels']:6.2f}"
            f"{s['quality'][engine]['bytes'] / 1000:6.1f}kB"
            for s in subsets.values()
        )
        print(f"  {ENGINE_NAMES[engine]:24s}{cells}")


# ------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "engine.json")
    args = parser.parse_args()
    rounds = int(os.environ.get("BENCH_ROUNDS", "5"))
    seconds = float(os.environ.get("BENCH_SECONDS", "0.5"))
    corpus.ensure()
    logs = args.out.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    usage = Usage().start()
    runners = start_runners(RUNNERS, logs)
    try:
        figures = measure_all(runners, CONFIGS, rounds, seconds, "engine")
        usage.stop()
        ours = sum(r.cpu_seconds() for r in runners.values()) + time.process_time()
        quality = {s.key: score_quality(runners["sharp"], s) for s in corpus.SUBSETS}
        info = {name: r.info for name, r in runners.items()}
    finally:
        close_all(runners)

    result: dict[str, Any] = {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "libvips": corpus.libvips_version(),
            "pyvips": pyvips.__version__,
            "pillow": PIL.__version__,
            "sharp": info["sharp"]["sharp"],
            "sharp_libvips": info["sharp"]["libvips"],
            "node": node_version(),
            "vips_default_concurrency": info["vd"]["vips_concurrency"],
            "rounds": rounds,
            "seconds": seconds,
            "elapsed_s": round(time.monotonic() - started),
            "loadavg_before": load_before,
            "others_share": usage.others(ours),
        },
        "configs": [asdict(c) for c in CONFIGS],
        "subsets": {},
    }
    for subset in corpus.SUBSETS:
        images = corpus.images(subset.key)
        result["subsets"][subset.key] = {
            "title": subset.title,
            "count": len(images),
            "size": f"{subset.width}x{subset.height}",
            "mean_bytes": statistics.fmean(i.bytes for i in images),
            "configs": figures[subset.key],
            "quality": quality[subset.key],
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print_tables(result)


if __name__ == "__main__":
    main()
