"""Peers part of ``make bench``: imgflow end to end against imaginary and thumbor, the image servers
people run instead, on this machine's cores, in one run.

Every server gets the same requests from the same closed-loop client as the end-to-end part
(``bench.e2e.closed_loop``, ``BENCH_E2E_INFLIGHT`` in flight, default 4) for ``BENCH_PEERS_SECONDS``
(default 5) per output and server, after a warm-up; the servers take turns output by output, so the
machine's other work falls on each alike. imgflow is measured end to end (upload -> job completed,
followed by Server-Sent Events or, with ``BENCH_E2E_WAIT=poll``, polled -> thumbnail fetched)
with its default settings, its durable MongoDB-wire store (FerretDB on PostgreSQL unless
``MONGODB_URL``) and local storage; the peers synchronously (request -> bytes). Two workloads:

- (a) today's thumbnails: the engine part's 100x100 cover JPEG q85 of 12 MP JPEG, 1080p JPEG, PNG
  and WebP;
- (b) imgproxy's published benchmark: ~2K photos (2040x1356 JPEG) fit inside 512x512 as JPEG q80,
  WebP q75, PNG and AVIF q65.

Figures per server and output: images/s, request -> bytes p50/p95, CPU ms per image of each of the
server's processes (every process under it: PostgreSQL's backends, thumbor's forks), PSNR (dB) of
the outputs (``bench.quality``, on the first few images), and imgflow's ratios to each peer. Then
the cost per job around the engine on 1080p JPEG -> 100x100 against its targets: the worker's CPU
per job against the engine's own CPU per image (the engine part's worker setup, from
``--engine``; without it, the worker's decode floor timed here), the API's CPU per accepted upload
(a short phase of uploads alone, nobody following them), MongoDB commands and Redis round trips
per job.

    python -m bench.peers.run [--engine bench/.results/engine.json] [--out bench/.results/peers.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench import corpus, e2e
from bench.engines import Source, worker_decode
from bench.peers import build
from bench.peers.servers import Output, Peer, Request, start_imaginary, start_thumbor
from bench.quality import Reference, fitted_psnr
from bench.system import cpu_model, tree_cpu_seconds
from imgflow.core.settings import StorageBackend
from imgflow.harness import ops
from imgflow.harness.servers import Server, start_stack

RESULTS = Path(__file__).resolve().parent.parent / ".results"
OUTPUTS = (
    *(Output("a", s.key, "jpeg", 85, 100, "cover") for s in corpus.SUBSETS),
    *(
        Output("b", corpus.PHOTOS_2K.key, fmt, q, 512, "inside")
        for fmt, q in (("jpeg", 80), ("webp", 75), ("png", None), ("avif", 65))
    ),
)
TARGET_OUTPUT = OUTPUTS[1]  # 1080p JPEG -> 100x100 cover JPEG
PSNR_IMAGES = 4  # per output and server: scoring costs more than making
# the cost per job around the engine: (what, target) -- figures at or below the target meet it
TARGETS = {"worker": 1.5, "api_ms": 3.0, "mongodb": 3.0}


@dataclass
class Run:
    """One server making one output for a while."""

    images: int
    elapsed_s: float
    latency_ms: list[float]
    cpu_s: dict[str, float]  # by process
    outputs: dict[str, bytes] = field(repr=False)  # the first output of each original, by file name
    psnr: float = float("nan")
    mongodb_per_job: dict[str, float] = field(default_factory=dict)  # imgflow only
    redis_round_trips: float = float("nan")

    @property
    def rate(self) -> float:
        return self.images / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def cpu_ms(self, process: str | None = None) -> float:
        """CPU ms per image of one process, or of all of them."""
        seconds = self.cpu_s[process] if process else sum(self.cpu_s.values())
        return 1000 * seconds / self.images if self.images else float("nan")


@dataclass
class Contender:
    name: str
    processes: dict[str, Server]
    request_for: Callable[[httpx.AsyncClient, Output], Request | None]
    base_url: str
    headers: dict[str, str] = field(default_factory=dict)
    metrics_urls: list[str] = field(default_factory=list)  # imgflow's: MongoDB commands
    redis_url: str = ""


def ratios(mine: Run, peer: Run) -> dict[str, float]:
    """imgflow against a peer: images/s (> 1: imgflow faster), CPU per image (the peer's over
    imgflow's: > 1, imgflow cheaper), PSNR difference (> 0: imgflow closer to the ideal)."""
    return {
        "rate": mine.rate / peer.rate if peer.rate else float("nan"),
        "cpu": peer.cpu_ms() / mine.cpu_ms(),
        "psnr": mine.psnr - peer.psnr,
    }


def imgflow_request(client: httpx.AsyncClient, output: Output) -> Request:
    fields = {"userId": "bench", "width": str(output.box), "height": str(output.box)}
    fields |= {"fit": output.fit, "format": output.format}
    if output.quality is not None:
        fields["quality"] = str(output.quality)

    async def request(image: corpus.Image, data: bytes) -> bytes:
        files = {"file": (image.path.name, data, "application/octet-stream")}
        submitted = time.time()
        response = await client.post(e2e.JOBS, files=files, data=fields)
        if response.status_code != 202:
            raise RuntimeError(f"POST {image.path.name}: {response.status_code} {response.text[:200]}")
        job_id = response.json()["jobId"]
        job = await (e2e.follow(client, job_id) if e2e.WAIT == "sse" else e2e.poll(client, job_id, submitted))
        if job.get("status") != "completed":
            raise RuntimeError(f"{image.path.name}: job {job.get('status')}: {job.get('error')}")
        thumbnail = await client.get(job["result"]["thumbnailUrl"])
        if thumbnail.status_code != 200:
            raise RuntimeError(f"{image.path.name}: thumbnail {thumbnail.status_code}")
        return thumbnail.content

    return request


async def measure(contender: Contender, output: Output, seconds: float, inflight: int) -> Run | None:
    async with httpx.AsyncClient(
        base_url=contender.base_url, timeout=120, headers=contender.headers
    ) as client:
        request = contender.request_for(client, output)
        if request is None:
            return None
        images = corpus.images(output.subset)
        payload = {image.path: image.path.read_bytes() for image in images}
        await e2e.closed_loop(images[:inflight], inflight, lambda i: request(i, payload[i.path]))
        outputs: dict[str, bytes] = {}
        done: list[tuple[float, float]] = []  # (latency, finished)

        async def one(image: corpus.Image) -> None:
            started = time.perf_counter()
            data = await request(image, payload[image.path])
            done.append((time.perf_counter() - started, time.perf_counter()))
            outputs.setdefault(image.path.name, data)

        work = images * (int(seconds * 2000) // len(images) + 1)  # more than any server finishes
        mongo = await ops.mongo_commands(contender.metrics_urls) if contender.metrics_urls else None
        reads = await e2e.redis_reads(contender.redis_url) if contender.redis_url else 0
        cpu = {name: tree_cpu_seconds(server.pid) for name, server in contender.processes.items()}
        started = time.perf_counter()
        await e2e.closed_loop(work, inflight, one, until=time.time() + seconds)
        elapsed = max(finished for _, finished in done) - started
        run = Run(
            images=len(done),
            elapsed_s=elapsed,
            latency_ms=[1000 * latency for latency, _ in done],
            cpu_s={name: tree_cpu_seconds(s.pid) - cpu[name] for name, s in contender.processes.items()},
            outputs=outputs,
        )
        if mongo is not None:
            after = await ops.mongo_commands(contender.metrics_urls)
            run.mongodb_per_job = ops.per_job(mongo, after, run.images)
            run.redis_round_trips = (await e2e.redis_reads(contender.redis_url) - reads) / run.images
        return run


def score(output: Output, run: Run, references: dict[Path, Reference]) -> float:
    scores = []
    for image in corpus.images(output.subset)[:PSNR_IMAGES]:
        data = run.outputs.get(image.path.name)
        if data is None:
            continue
        if output.fit == "cover":
            reference = references.setdefault(image.path, Reference(image))
            scores.append(reference.psnr(data))
        else:
            scores.append(fitted_psnr(image.path.read_bytes(), data))
    return statistics.fmean(scores) if scores else float("nan")


async def accept_cost(contender: Contender, seconds: float, inflight: int) -> float:
    """The API's CPU ms per accepted upload of a 1080p JPEG, with nobody following the jobs."""
    images = corpus.images(TARGET_OUTPUT.subset)
    payload = {image.path: image.path.read_bytes() for image in images}
    api = contender.processes["API"]
    async with httpx.AsyncClient(
        base_url=contender.base_url, timeout=120, headers=contender.headers
    ) as client:

        async def upload(image: corpus.Image) -> None:
            files = {"file": (image.path.name, payload[image.path], "application/octet-stream")}
            response = await client.post(e2e.JOBS, files=files, data={"userId": "bench"})
            if response.status_code != 202:
                raise RuntimeError(f"POST {image.path.name}: {response.status_code}")

        before = tree_cpu_seconds(api.pid)
        work = images * (int(seconds * 2000) // len(images) + 1)
        accepted = await e2e.closed_loop(work, inflight, upload, until=time.time() + seconds)
        return 1000 * (tree_cpu_seconds(api.pid) - before) / len(accepted)


def decode_floor_ms(seconds: float = 1.0) -> float:
    """CPU ms per image of the worker's decode alone on 1080p JPEG, timed in this process."""
    sources = [Source.of(i.path.read_bytes()) for i in corpus.images(TARGET_OUTPUT.subset)]
    worker_decode(sources[0])
    count, cpu, deadline = 0, time.process_time(), time.monotonic() + seconds
    while time.monotonic() < deadline:
        worker_decode(sources[count % len(sources)])
        count += 1
    return 1000 * (time.process_time() - cpu) / count


def engine_cpu_ms(engine: Path) -> tuple[float, str]:
    """The engine's own CPU ms per image on 1080p JPEG -> 100x100, and where it comes from."""
    if engine.exists():
        configs = json.loads(engine.read_text())["subsets"][TARGET_OUTPUT.subset]["configs"]
        return float(configs["imgflow_dc2"]["cpu_ms"]), "the engine part's worker setup, this run"
    return decode_floor_ms(), "the worker's decode floor (no engine part in this run)"


async def compare(
    peers: list[Peer], workdir: Path, logs: Path, seconds: float, inflight: int
) -> tuple[dict[tuple[int, str], Run], float, str]:
    stack = start_stack(e2e.stack_settings(workdir, StorageBackend.local), workdir, logs=logs)
    try:
        settings = stack.settings
        processes = {"worker": stack.worker, "API": stack.api, "Redis": stack.redis}
        if stack.mongo.server is not None:
            processes[stack.mongo.kind] = stack.mongo.server
        contenders = [
            Contender(
                "imgflow",
                processes,
                imgflow_request,
                f"http://127.0.0.1:{settings.api_port}",
                {"Authorization": f"Bearer {settings.admin_key}"},
                [
                    f"http://127.0.0.1:{settings.api_port}/metrics",
                    f"http://127.0.0.1:{settings.worker_metrics_port}/metrics",
                ],
                settings.redis_url,
            ),
            *(
                Contender(p.name, {p.name: p.server}, p.request_for, f"http://127.0.0.1:{p.port}")
                for p in peers
            ),
        ]
        runs: dict[tuple[int, str], Run] = {}
        for n, output in enumerate(OUTPUTS):
            for contender in contenders[n % len(contenders) :] + contenders[: n % len(contenders)]:
                run = await measure(contender, output, seconds, inflight)
                if run is not None:
                    runs[n, contender.name] = run
            print(f"peers: {output.title} done", flush=True, file=sys.stderr)
        api_ms = await accept_cost(contenders[0], seconds, inflight)
        return runs, api_ms, stack.mongo.kind
    finally:
        stack.stop()


# ----------------------------------------------------------------------------------------- output


def p(values: list[float], q: float) -> float:
    return e2e.percentile(values, q)


def print_tables(result: dict[str, Any], runs: dict[tuple[int, str], Run], names: list[str]) -> None:
    meta = result["meta"]
    print(
        f"\nPeers: imgflow end to end (upload -> job completed ({meta['wait']}) -> thumbnail fetched;\n"
        f"default settings, {meta['mongo']}, local storage) against\n"
        f"{', '.join(meta['peers']) or 'no peer'} synchronously "
        f"(request -> bytes); {meta['inflight']} in flight, {meta['seconds']:g} s per output and server; "
        f"{meta['cpus']} x {meta['cpu']},\n1-min load average {meta['loadavg']:.1f} at the start."
    )
    for why in meta["left_out"]:
        print(f"  left out: {why}")
    head = f"  {'server':10s}{'images/s':>9s}{'p50 ms':>8s}{'p95 ms':>8s}{'PSNR dB':>9s}  CPU ms per image"
    for workload, title in (("a", "(a) today's thumbnails"), ("b", "(b) imgproxy's published benchmark")):
        print(f"\n{title}\n{head}")
        for n, output in enumerate(OUTPUTS):
            if output.workload != workload:
                continue
            print(f"{output.title}")
            for name in names:
                run = runs.get((n, name))
                if run is None:
                    print(f"  {name:10s}{'cannot make this output':>34s}")
                    continue
                parts = ", ".join(f"{k} {run.cpu_ms(k):.1f}" for k in run.cpu_s)
                print(
                    f"  {name:10s}{run.rate:9.1f}{p(run.latency_ms, 50):8.0f}{p(run.latency_ms, 95):8.0f}"
                    f"{run.psnr:9.2f}  {run.cpu_ms():.1f}" + (f" ({parts})" if len(run.cpu_s) > 1 else "")
                )
            mine = runs.get((n, "imgflow"))
            for name in names[1:]:
                if mine is not None and (n, name) in runs:
                    r = ratios(mine, runs[n, name])
                    print(
                        f"    imgflow / {name}: images/s {r['rate']:.2f}, CPU per image {r['cpu']:.2f} "
                        f"({name}'s / imgflow's), PSNR {r['psnr']:+.2f} dB"
                    )
    cost = result["cost"]
    print(f"\nCost per job around the engine, {TARGET_OUTPUT.title} (imgflow's run above): figure vs target")
    rows = [
        (
            "worker CPU per job / engine CPU per image",
            f"{cost['worker_ms'] / cost['engine_ms']:.2f} ({cost['worker_ms']:.1f} / "
            f"{cost['engine_ms']:.1f} ms; engine: {cost['engine_from']})",
            f"<= {TARGETS['worker']:g}x",
        ),
        (
            "API CPU per accepted upload",
            f"{cost['api_ms']:.1f} ms (uploads alone)",
            f"<= {TARGETS['api_ms']:g} ms",
        ),
        ("MongoDB commands per job", ops.describe(cost["mongodb_per_job"]), f"<= {TARGETS['mongodb']:g}"),
        ("Redis round trips per job", f"{cost['redis_round_trips']:.1f}", "(none)"),
        (
            "CPU ms per job by process",
            ", ".join(f"{k} {v:.1f}" for k, v in cost["cpu_ms"].items()),
            "",
        ),
    ]
    for label, figure, target in rows:
        print(f"  {label:42s}{figure}" + (f"   target {target}" if target else ""))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--engine", type=Path, default=RESULTS / "engine.json")
    parser.add_argument("--out", type=Path, default=RESULTS / "peers.json")
    args = parser.parse_args()
    seconds = float(os.environ.get("BENCH_PEERS_SECONDS", "5"))
    inflight = int(os.environ.get("BENCH_E2E_INFLIGHT", "4"))
    corpus.ensure()
    logs = args.out.parent / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, e2e.raise_exit)  # so the servers are stopped on `kill` too
    loadavg = os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="imgflow-bench-peers-"))
    peers: list[Peer] = []
    left_out: list[str] = []
    try:
        starts: dict[str, Callable[[], Peer]] = {
            "imaginary": lambda: start_imaginary(build.imaginary(), logs),
            "thumbor": lambda: start_thumbor(build.thumbor(), workdir, logs),
        }
        for name, start in starts.items():
            try:
                peers.append(start())
            except (build.Unavailable, RuntimeError) as exc:
                left_out.append(f"{name}: {exc}")
        runs, api_ms, mongo = asyncio.run(compare(peers, workdir, logs, seconds, inflight))
    finally:
        for peer in peers:
            peer.server.kill()  # the whole session: thumbor's forks too
        shutil.rmtree(workdir, ignore_errors=True)
    references: dict[Path, Reference] = {}
    for (n, _), run in runs.items():
        run.psnr = score(OUTPUTS[n], run, references)
    target = runs[OUTPUTS.index(TARGET_OUTPUT), "imgflow"]
    engine_ms, engine_from = engine_cpu_ms(args.engine)
    names = ["imgflow", *(p.name for p in peers)]
    result: dict[str, Any] = {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "loadavg": loadavg,
            "seconds": seconds,
            "inflight": inflight,
            "mongo": mongo,
            "wait": "Server-Sent Events" if e2e.WAIT == "sse" else f"polled every {1000 * e2e.POLL_S:.0f} ms",
            "peers": [f"{p.name} {build.VERSIONS[p.name]}" for p in peers],
            "left_out": left_out,
        },
        "runs": [
            {
                "output": asdict(OUTPUTS[n]),
                "server": name,
                "images_per_s": run.rate,
                "p50_ms": p(run.latency_ms, 50),
                "p95_ms": p(run.latency_ms, 95),
                "cpu_ms": {k: run.cpu_ms(k) for k in run.cpu_s},
                "psnr": run.psnr,
                **(
                    {"ratios": {peer: ratios(run, runs[n, peer]) for peer in names[1:] if (n, peer) in runs}}
                    if name == "imgflow"
                    else {}
                ),
            }
            for (n, name), run in runs.items()
        ],
        "cost": {
            "worker_ms": target.cpu_ms("worker"),
            "engine_ms": engine_ms,
            "engine_from": engine_from,
            "api_ms": api_ms,
            "mongodb_per_job": target.mongodb_per_job,
            "redis_round_trips": target.redis_round_trips,
            "cpu_ms": {k: target.cpu_ms(k) for k in target.cpu_s},
        },
    }
    args.out.write_text(json.dumps(result, indent=1))
    print_tables(result, runs, names)


if __name__ == "__main__":
    main()
