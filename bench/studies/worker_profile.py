"""Where a worker's CPU goes around the engine: the whole stack on loopback (as ``bench.e2e`` starts
it), its worker run under py-spy (a sampling profiler from PyPI, fetched by ``uvx``), and ``--jobs``
of the peers part's 1080p JPEG -> 100x100 cover JPEG q85 (``bench.peers.run``), 4 in flight,
clients polling. Prints the worker's busy samples by part of a job (the share of each, every thread)
with the CPU per job of the worker and API, MongoDB commands and Redis round trips per job in the
same window; ``--out`` keeps py-spy's raw stacks. Sampling at 500 Hz costs the worker CPU of its
own: compare shares, not these CPU figures with ``make bench``'s; ``--no-profiler`` gives the
figures alone, unprofiled (to compare two versions: run it with ``PYTHONPATH`` naming another
checkout's ``core/src:worker/src:api/src``, whose API and worker then run).

    python -m bench.studies.worker_profile [--jobs 300] [--out worker-profile.txt] [--no-profiler]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from bench import corpus, e2e
from bench.peers.run import TARGET_OUTPUT, imgflow_request
from bench.system import tree_cpu_seconds
from imgflow.core.settings import StorageBackend
from imgflow.harness import ops
from imgflow.harness.servers import Stack, settings_env, start_stack, wait_for_port

PY_SPY = ["uvx", "--from", "py-spy==0.4.3", "py-spy", "record", "-f", "raw", "-r", "500", "--threads"]
# a helper thread waiting for work, the event loop waiting for I/O (uvloop's own work lands here too)
IDLE = ("Condition.wait", "Runner.run")
# (part, a frame in its stacks), the first that matches names a sample's part
PARTS = [
    ("engine: decode, resize, encode, placeholders (helper threads)", "Processor._thumbnails"),
    ("probe (helper thread)", "Processor._probe"),
    ("MongoDB: the admit read (find)", "JobStore.get "),
    ("MongoDB: start (findAndModify)", "JobStore.start "),
    ("MongoDB: complete (findAndModify)", "JobStore.complete "),
    ("MongoDB: driver, other", "pymongo/"),
    ("Redis: taking the next job, idle asks included", "Worker._take "),
    ("Redis: the job's other round trips", "redis/"),
    ("storage: original read, output written", "storage/"),
    ("hand-offs to helper threads", "to_thread"),
    ("pydantic: messages, documents, snapshots", "pydantic/"),
    ("logging and metrics", "logging/"),
    ("logging and metrics", "prometheus_client/"),
    ("the job's other Python", "Worker."),
]


def part_of(stack: str) -> str:
    return next((name for name, frame in PARTS if frame in stack), "event loop, start-up, other")


def shares(raw: Path) -> tuple[Counter[str], int]:
    """Busy samples by part, and their total."""
    found: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")[1:]  # the first names the thread
        if frames and not frames[-1].startswith(IDLE) and "importlib" not in stack:  # not start-up
            found[part_of(stack)] += int(count)
    return found, sum(found.values())


def worker_pid(root: int) -> int:
    """The worker under py-spy (under uvx) started as ``root``."""
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[1:3] == [b"-m", b"imgflow.worker"] and _descends(int(entry.name), root):
            return int(entry.name)
    raise RuntimeError("the profiled worker is not running")


def _descends(pid: int, root: int) -> bool:
    while pid > 1:
        if pid == root:
            return True
        pid = int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    return False


async def drive(stack: Stack, worker: int, jobs: int) -> tuple[dict[str, float], dict[str, float], float]:
    """``jobs`` requests after a warm-up: CPU seconds of the worker and API, MongoDB commands and
    Redis round trips per job."""
    s = stack.settings
    metrics = [f"http://127.0.0.1:{port}/metrics" for port in (s.api_port, s.worker_metrics_port)]
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{s.api_port}",
        timeout=120,
        headers={"Authorization": f"Bearer {s.admin_key}"},
    ) as client:
        request = imgflow_request(client, TARGET_OUTPUT)
        images = corpus.images(TARGET_OUTPUT.subset)
        payload = {i.path: i.path.read_bytes() for i in images}
        await e2e.closed_loop(images * 2, 4, lambda i: request(i, payload[i.path]))  # warm-up
        mongo, trips = await ops.mongo_commands(metrics), await e2e.redis_reads(s.redis_url)
        processes = {"worker": worker, "API": stack.api.pid}
        before = {name: tree_cpu_seconds(pid) for name, pid in processes.items()}
        work = (images * (jobs // len(images) + 1))[:jobs]
        await e2e.closed_loop(work, 4, lambda i: request(i, payload[i.path]))
        used = {name: tree_cpu_seconds(pid) - before[name] for name, pid in processes.items()}
        per_job = ops.per_job(mongo, await ops.mongo_commands(metrics), jobs)
        return used, per_job, (await e2e.redis_reads(s.redis_url) - trips) / jobs


def profile(jobs: int, out: Path | None, workdir: Path) -> None:
    stack = start_stack(e2e.stack_settings(workdir, StorageBackend.local), workdir)
    try:
        stack.worker.terminate()  # the same worker again, under the profiler
        env = {**os.environ, **settings_env(stack.settings)}
        argv = [sys.executable, "-m", "imgflow.worker"]
        if out is not None:
            argv = [*PY_SPY, "-o", str(out), "--", *argv]
        with (workdir / "worker.log").open("w") as log:
            spy = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(stack.settings.worker_metrics_port, timeout=180)
        worker = spy.pid if out is None else worker_pid(spy.pid)
        used, per_job, trips = asyncio.run(drive(stack, worker, jobs))
        os.kill(worker, signal.SIGTERM)
        spy.wait(120)
    finally:
        stack.stop()
    if out is not None:
        found, total = shares(out)
        print(f"Worker under py-spy, {jobs} jobs of {TARGET_OUTPUT.title}: share of its busy samples")
        for name, count in found.most_common():
            print(f"  {100 * count / total:5.1f} %  {name}")
    print(", ".join(f"{name} CPU {1000 * seconds / jobs:.1f} ms per job" for name, seconds in used.items()))
    print(f"MongoDB commands per job {ops.describe(per_job)}; Redis round trips per job {trips:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("worker-profile.txt"))
    parser.add_argument("--no-profiler", action="store_true", help="the worker unprofiled: figures only")
    args = parser.parse_args()
    corpus.ensure()
    workdir = Path(tempfile.mkdtemp(prefix="imgflow-worker-profile-"))
    started = time.monotonic()
    try:
        profile(args.jobs, None if args.no_profiler else args.out.resolve(), workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"({time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
