"""A long-lived timing process: ``bench.engine`` starts a few and sends them JSON lines on stdin.

    {"op": "load", "subsets": {"jpeg12mp": ["/path/a.jpg", ...], ...}}
    {"op": "run", "engine": "imgflow", "subset": "jpeg12mp", "threads": 2, "start_at": 1.7e9, "seconds": 1.2}
    {"op": "quit"}

Each answer is one JSON line on stdout. A run's threads each make one untimed thumbnail, wait for
the wall-clock ``start_at`` (the same instant for every process of a multi-process run), then
cycle through the subset, each from its own offset, until ``start_at + seconds``; the image in hand
at the deadline is finished and counted. The throughput is the sum over threads of images/elapsed.
``VIPS_CONCURRENCY`` in this process's environment sets libvips' threads per image, and
``BENCH_VIPS_CACHE_MAX`` (when set) the size of libvips' operation cache. Engines are those of
``bench.engines`` and, as ``variant:<name>``, those of ``bench.variants``.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pyvips

from bench.engines import ENGINES, Engine, Source
from bench.variants import VARIANTS


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process, libvips' too
    return usage.ru_utime + usage.ru_stime


def engine(name: str) -> Engine:
    if name.startswith("variant:"):
        return VARIANTS[name.removeprefix("variant:")]
    return ENGINES[name]


def run(sources: list[Source], name: str, threads: int, start_at: float, seconds: float) -> dict[str, Any]:
    fn = engine(name)
    counts = [0] * threads
    elapsed = [0.0] * threads
    errors: list[BaseException] = []

    def loop(index: int) -> None:
        try:
            fn(sources[index % len(sources)])  # warm-up: first-use costs stay out of the figures
            time.sleep(max(0.0, start_at - time.time()))
            started = time.perf_counter()
            deadline = started + max(0.0, start_at + seconds - time.time())
            i = index
            while time.perf_counter() < deadline:
                fn(sources[i % len(sources)])
                counts[index] += 1
                i += 1
            elapsed[index] = time.perf_counter() - started
        except BaseException as exc:  # reported to the parent, which stops the benchmark
            errors.append(exc)

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    time.sleep(max(0.0, start_at - time.time()))
    cpu = _cpu_seconds()
    for worker in workers:
        worker.join()
    cpu = _cpu_seconds() - cpu
    if errors:
        raise errors[0]
    return {
        "images": sum(counts),
        "rate": sum(n / t for n, t in zip(counts, elapsed, strict=True) if t > 0),
        "cpu": cpu,
    }


def main() -> None:
    if cache_max := os.environ.get("BENCH_VIPS_CACHE_MAX"):
        pyvips.cache_set_max(int(cache_max))
    sources: dict[str, list[Source]] = {}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            op = request["op"]
            if op == "quit":
                break
            if op == "load":
                for key, paths in request["subsets"].items():
                    sources[key] = [Source.of(Path(p).read_bytes()) for p in paths]
                answer: dict[str, Any] = {"ok": True, "vips_concurrency": pyvips.concurrency_get()}
            elif op == "run":
                answer = run(
                    sources[request["subset"]],
                    request["engine"],
                    int(request["threads"]),
                    float(request["start_at"]),
                    float(request["seconds"]),
                )
            else:
                answer = {"error": f"unknown op {op!r}"}
        except Exception as exc:
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
