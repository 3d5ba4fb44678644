"""Scale-out per worker core (issue 22 item 3): workload (b) of the peers part (~2K photos -> fit
inside 512x512, JPEG q80) through the API Service of a release on the local node, the worker
Deployment at 1, 2 and 3 replicas of one core each, against imaginary given one core.

    uv run --frozen python -m bench.node_scaleout [--replicas 1 2 3] [--jobs 120] [--warmup 12]
        [--inflight-per-worker 3] [--kubeconfig .cluster/kubeconfig] [--namespace imgflow]
        [--release imgflow] [--install [--concurrency 1]] [--json PATH]

``--install`` installs (or upgrades) the release with ``make deploy``'s script and
``SCALEOUT_VALUES``: the workers not autoscaled (the operator leaves the Deployment alone, the
bench sets its replicas), ``--concurrency`` jobs at a time per worker (default 1, the README's
advice where the engine is the bottleneck), a CPU limit of one core per worker pod, and no job reusing
an identical upload's outputs (the corpus goes round many times, as in the peers part). The workers'
CPU request stays the chart's 250m: three requests of one core do not fit a 2-core node beside the
release's other pods.

For each replica count: the worker pods Ready, then imaginary and imgflow in turn, each a
closed-loop client (``bench.e2e.closed_loop``, the peers part's requests) of ``--warmup`` jobs,
then ``--jobs`` jobs timed. imgflow's client runs in the node's network namespace and follows each
job as the peers part does (``BENCH_E2E_WAIT``: Server-Sent Events unless ``poll``), with
``--inflight-per-worker`` jobs per worker plus 2 in flight; imaginary (``-cpus 1``) listens on
loopback in a cgroup of its own limited to one core as the worker pods' limits are, and gets the
1-replica run's number in flight; that cgroup sits under the node's cgroup root, so that imaginary
and the node's pods, in turn, compete alike with whatever else the machine runs (the node's root
is one group among the machine's, and another node's, say, weighs as much). CPU is read from the
cgroups: ``cpuacct.usage`` of each of the release's pods (by component: worker, api, redis,
mongodb, seaweedfs, operator), imaginary's from /proc; with them the seconds each one's threads
waited for a CPU (schedstat) and the client's own CPU. Per worker core: images/s divided by the
cores the limits give, min(replicas x 1, the machine's cores): the machine has 2 cores, so 3
replicas of 1 core are oversubscribed, and the API, Redis, the MongoDB-wire server, SeaweedFS and
the load clients share the same cores.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

import httpx

from bench import corpus, e2e
from bench.node_args import deploy, node_parser
from bench.peers import build
from bench.peers.run import OUTPUTS, RESULTS, imgflow_request
from bench.peers.servers import Peer, Request, start_imaginary
from bench.system import cpu_model, tree_cpu_seconds
from imgflow.harness.autoscale import kubectl, pods, wait
from imgflow.harness.node_cpu import (
    Measured,
    client_counters,
    cpu_delta,
    cpu_limited,
    granted_cores,
    node_cgroup,
    per_core,
    pods_cpu_s,
    pods_waited_s,
    quota_cores,
    throttled_s,
    waited_s,
)
from imgflow.harness.node_faults import Load, Release, start_in_node

OUTPUT = next(o for o in OUTPUTS if o.workload == "b" and o.format == "jpeg")
WORKER_LIMIT_CORES = 1
SCALEOUT_VALUES = [
    "--set", "worker.autoscaling.enabled=false",
    "--set", "worker.replicas=1",
    "--set", f"worker.resources.limits.cpu={WORKER_LIMIT_CORES}",
    "--set", "config.reuseDisabledTenants=*",
]  # fmt: skip
COMPONENTS = ("worker", "api", "redis", "mongodb", "seaweedfs", "operator")


def release_pods(release: Release) -> dict[str, str]:
    """uid -> component of the release's running pods."""
    found = {}
    for component in COMPONENTS:
        for pod in pods(release.kubeconfig, release.namespace, component):
            if pod["status"].get("phase") == "Running" and not pod["metadata"].get("deletionTimestamp"):
                found[pod["metadata"]["uid"]] = component
    return found


async def closed_loop_timed(
    request: Request, jobs: int, warmup: int, inflight: int, cpu: Callable[[], dict[str, float]]
) -> Measured:
    """``warmup`` images, then ``jobs`` images timed, ``inflight`` at a time, cycling the corpus."""
    images = corpus.images(OUTPUT.subset)
    payload = {image.path: image.path.read_bytes() for image in images}

    def work(count: int) -> list[corpus.Image]:
        return list(itertools.islice(itertools.cycle(images), count))

    async def one(image: corpus.Image) -> bytes:
        return await request(image, payload[image.path])

    await e2e.closed_loop(work(warmup), inflight, one)
    before, started = cpu(), time.perf_counter()
    await e2e.closed_loop(work(jobs), inflight, one)
    elapsed = time.perf_counter() - started
    return Measured(jobs, elapsed, cpu_delta(before, cpu()))


def in_node(release: Release, work: Callable[[httpx.AsyncClient], Awaitable[Measured]]) -> Measured:
    """``work`` with a client of the API Service, in the node's network namespace."""
    load = Load(jobs=0, allowance=0)
    done: list[Measured] = []

    async def run(client: httpx.AsyncClient) -> None:
        done.append(await work(client))

    start_in_node(release, load, "node-scaleout", run).join()
    if load.errors or not done:
        raise RuntimeError(f"the load in the node stopped: {load.errors}")
    return done[0]


def scale(release: Release, replicas: int) -> list[str]:
    """The worker Deployment at ``replicas``, every pod Ready and no other left; their uids."""
    deployment = f"deployment/{release.name}-worker"
    kubectl(release.kubeconfig, "scale", deployment, "-n", release.namespace, f"--replicas={replicas}")

    def ready() -> list[dict[str, Any]] | None:
        found = pods(release.kubeconfig, release.namespace, "worker")
        up = [
            p
            for p in found
            if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
            and not p["metadata"].get("deletionTimestamp")
        ]
        return up if len(up) == len(found) == replicas else None

    wait(f"{replicas} worker pods Ready", ready, 300)
    return [p["metadata"]["uid"] for p in ready() or []]


def worker_concurrency(release: Release) -> str:
    """IMGFLOW_WORKER_CONCURRENCY of the release (its ConfigMap)."""
    return str(release.get("configmap", "config")["data"].get("IMGFLOW_WORKER_CONCURRENCY", "default"))


def not_autoscaled(release: Release) -> None:
    labels = release.get("deployment", "worker")["metadata"].get("labels", {})
    if labels.get("imgflow.io/autoscale") == "true":
        raise SystemExit("the worker Deployment is autoscaled by the operator: run with --install")


def step(release: Release, imaginary: Peer, replicas: int, args: Any) -> dict[str, Any]:
    """One replica count: imaginary, then imgflow, and what each made per core."""
    workers = scale(release, replicas)
    uids = release_pods(release)
    inflight = args.inflight_per_worker * replicas + 2
    imaginary_inflight = args.inflight_per_worker + 2

    async def peer_run() -> Measured:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{imaginary.port}", timeout=120) as client:
            request = imaginary.request_for(client, OUTPUT)
            assert request is not None  # imaginary writes JPEG
            return await closed_loop_timed(
                request,
                args.jobs,
                args.warmup,
                imaginary_inflight,
                lambda: {
                    "imaginary": tree_cpu_seconds(imaginary.server.pid),
                    "imaginary waited": waited_s([imaginary.server.pid]),
                    **client_counters(),
                },
            )

    async def imgflow(client: httpx.AsyncClient) -> Measured:
        return await closed_loop_timed(
            imgflow_request(client, OUTPUT),
            args.jobs,
            args.warmup,
            inflight,
            lambda: {**pods_cpu_s(uids), **pods_waited_s(uids), **client_counters()},
        )

    peer = asyncio.run(peer_run())
    throttled = throttled_s(workers)
    mine = in_node(release, imgflow)
    cores = granted_cores(replicas, WORKER_LIMIT_CORES, os.cpu_count() or 1)
    figures = per_core(mine, cores, "worker")
    peer_figures = per_core(peer, 1.0, "imaginary")
    return {
        "replicas": replicas,
        "inflight": inflight,
        "imaginary_inflight": imaginary_inflight,
        "worker_limits_cores": [quota_cores(uid) for uid in workers],
        "worker_throttled_s": throttled_s(workers) - throttled,
        "load_1min": os.getloadavg()[0],
        "imgflow": {**figures, "ms_per_image": per_image_ms(mine)},
        "imaginary": {**peer_figures, "ms_per_image": per_image_ms(peer)},
        "per_core_ratio": figures["per_core"] / peer_figures["per_core"],
        "runs": {"imgflow": asdict(mine), "imaginary": asdict(peer)},
    }


def per_image_ms(run: Measured) -> dict[str, float]:
    return {k: 1000 * v / run.images for k, v in run.cpu_s.items()}


def table(result: dict[str, Any]) -> str:
    meta = result["meta"]
    lines = [
        f"Scale-out per worker core, {OUTPUT.title}: imgflow end to end through the API Service "
        f"(clients in the node, {meta['wait']}), workers at concurrency {meta['concurrency']} with a "
        f"CPU limit of {WORKER_LIMIT_CORES} core each; imaginary -cpus 1 in a 1-core cgroup on loopback; "
        f"{meta['jobs']} jobs timed after {meta['warmup']}; {meta['cpus']} x {meta['cpu']}, "
        f"load {meta['load_before']:.1f} at the start.",
        "The machine has 2 cores: 3 replicas of 1 core are oversubscribed, and the API, Redis, the "
        "MongoDB-wire server, SeaweedFS and the clients share those cores (other pods' CPU below).",
        f"{'replicas':>8s}{'cores':>6s}{'in flight':>10s}{'images/s':>9s}{'per core':>9s}"
        f"{'imaginary/core':>15s}{'ratio':>7s}{'worker ms/img':>14s}{'busy':>6s}{'throttled s':>12s}"
        f"{'load':>6s}  ms per image: other pods' CPU, waits for a CPU, the client's CPU",
    ]
    for s in result["steps"]:
        mine, peer = s["imgflow"], s["imaginary"]
        others = ", ".join(f"{k} {v:.1f}" for k, v in mine["ms_per_image"].items() if k != "worker")
        peer_ms = ", ".join(f"{k} {v:.1f}" for k, v in peer["ms_per_image"].items())
        lines.append(
            f"{s['replicas']:8d}{mine['cores']:6.0f}{s['inflight']:10d}{mine['images_per_s']:9.1f}"
            f"{mine['per_core']:9.1f}{peer['per_core']:15.1f}{s['per_core_ratio']:7.2f}"
            f"{mine['cpu_ms_per_image']:14.1f}{mine['busy_cores']:6.2f}{s['worker_throttled_s']:12.1f}"
            f"{s['load_1min']:6.1f}  {others}"
        )
        lines.append(
            f"{'':8s}imaginary: {peer['images_per_s']:.1f} images/s with {s['imaginary_inflight']} in "
            f"flight, {peer['busy_cores']:.2f} cores busy, ms per image: {peer_ms}; worker limits "
            f"{s['worker_limits_cores']} cores"
        )
    return "\n".join(lines)


def main() -> None:
    parser = node_parser(__doc__, "install/upgrade the release first (scripts/deploy.sh)")
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--jobs", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=12)
    parser.add_argument("--inflight-per-worker", type=int, default=3)
    parser.add_argument(
        "--concurrency", type=int, default=1, help="IMGFLOW_WORKER_CONCURRENCY (with --install)"
    )
    args = parser.parse_args()
    if args.install:
        deploy(args, [*SCALEOUT_VALUES, "--set", f"config.workerConcurrency={args.concurrency}"])
    release = Release(args.kubeconfig, args.namespace, args.release)
    not_autoscaled(release)
    corpus.ensure()
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "load_before": os.getloadavg()[0],
            "concurrency": worker_concurrency(release),
            "jobs": args.jobs,
            "warmup": args.warmup,
            "wait": "Server-Sent Events" if e2e.WAIT == "sse" else f"polled every {1000 * e2e.POLL_S:.0f} ms",
            "imaginary": build.IMAGINARY_VERSION,
        },
        "steps": [],
    }
    node = node_cgroup(next(iter(release_pods(release))))
    imaginary = start_imaginary(build.imaginary(), logs, cores=1)
    with cpu_limited(imaginary.server.pid, 1.0, node):
        try:
            for replicas in args.replicas:
                result["steps"].append(step(release, imaginary, replicas, args))
                print(table(result).splitlines()[-2], flush=True)
        finally:
            imaginary.server.kill()
    result["meta"]["load_after"] = os.getloadavg()[0]
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
