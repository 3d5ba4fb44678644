"""How fast imgflow-operator reacts to a backlog: from messages published to the replica patch.

Starts what it needs on loopback: a Redis and a private kube-apiserver + etcd
(``scripts/cluster.sh``, CRDs installed; or the cluster of ``IMGFLOW_KUBECONFIG``, e.g. after
``make cluster-up``). In a fresh namespace it grants the operator's RBAC (the chart's
ServiceAccount, Role and RoleBinding, by ``helm template``), runs ``imgflow-operator`` under that
ServiceAccount and creates an autoscaled worker Deployment (scale-to-zero, 1 message per
replica, 1 s scale-down window). No worker runs: nothing consumes, so the backlog is exactly what
the trial publishes.

Each trial waits for 0 replicas, publishes ``--messages`` stream entries (XADD), and takes the time
from the last XADD's reply to the watch event that shows the Deployment's new ``spec.replicas``
(the patch as any client sees it). It then deletes the stream and times the way back to 0 (the
scale-down window plus the halving steps). The operator ticks every ``autoscale_interval_s``
(0.5 s by default), so the wake-up time is that tick's phase plus one XINFO GROUPS and one PATCH.
For scale: HPA + KEDA typically need ~30 s to scale a Deployment up from zero (KEDA's default
pollingInterval is 30 s).

    uv run --frozen python -m bench.studies.operator_reaction [--trials 15] [--messages 5] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import kubernetes
import redis

from imgflow.harness.kube import Kube, cluster_sh, server_of
from imgflow.harness.operator import (
    WORKER_DEPLOYMENT,
    api_client,
    operator_kubeconfig,
    start_operator,
    worker_deployment,
)
from imgflow.harness.servers import free_port, redis_server, wait_for_port
from imgflow.operator.settings import OperatorSettings


@contextmanager
def control_plane(work: Path) -> Iterator[Kube]:
    external = os.environ.get("IMGFLOW_KUBECONFIG")
    if external:
        path = Path(external).resolve()
        yield Kube(kubeconfig=path, server=server_of(path))
        return
    cluster = work / "cluster"
    up = cluster_sh(cluster, "up")
    if up.returncode != 0:
        cluster_sh(cluster, "down")
        raise SystemExit(f"scripts/cluster.sh up failed:\n{up.stderr}")
    try:
        yield Kube(
            kubeconfig=cluster / "kubeconfig", server=server_of(cluster / "kubeconfig"), cluster_dir=cluster
        )
    finally:
        cluster_sh(cluster, "down")


def wait_replicas(watch_api: kubernetes.client.AppsV1Api, namespace: str, want: Any, timeout: float) -> float:
    """Block until the Deployment's spec.replicas satisfies ``want``; returns the monotonic time seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
        for event in watch.stream(  # type: ignore[no-untyped-call]
            watch_api.list_namespaced_deployment,
            namespace,
            field_selector=f"metadata.name={WORKER_DEPLOYMENT}",
            timeout_seconds=max(1, int(deadline - time.monotonic())),
        ):
            replicas = event["object"].spec.replicas
            if want(replicas):
                seen = time.monotonic()
                watch.stop()  # type: ignore[no-untyped-call]
                return seen
    raise TimeoutError(f"replicas never satisfied the condition within {timeout}s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--messages", type=int, default=5, help="stream entries published per trial")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    with ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="imgflow-bench-operator-"))
        stack.callback(shutil.rmtree, work, True)
        kube = stack.enter_context(control_plane(work))

        port = free_port()
        redis_proc = redis_server(work / "redis", port).start()
        stack.callback(redis_proc.terminate)
        wait_for_port(port, process=redis_proc.process)

        namespace = f"bench-{uuid.uuid4().hex[:6]}"
        kube.kubectl("create", "namespace", namespace)
        stack.callback(kube.kubectl, "delete", "namespace", namespace, "--wait=false", check=False)
        kubeconfig = operator_kubeconfig(
            kube.kubectl, kube.kubeconfig, namespace, work / "operator.kubeconfig"
        )
        annotations = {
            "imgflow.io/min-replicas": "0",
            "imgflow.io/max-replicas": "10",
            "imgflow.io/backlog-per-replica": "1",
            "imgflow.io/scale-to-zero": "true",
            "imgflow.io/scale-down-window-seconds": "1",
        }
        kube.kubectl(
            "create", "-n", namespace, "-f", "-", input=json.dumps(worker_deployment(annotations, replicas=0))
        )

        settings = OperatorSettings.model_validate(
            {
                "redis_url": f"redis://127.0.0.1:{port}/0",
                # Never contacted: no ImageJob is created here.
                "mongodb_url": f"mongodb://127.0.0.1:{free_port()}",
                "stream": f"bench:{uuid.uuid4().hex[:8]}",
                "operator_namespace": namespace,
            }
        )
        operator = start_operator(settings, kubeconfig, work / "operator.log")
        stack.callback(operator.server.terminate)

        r = redis.Redis(port=port)
        apps = kubernetes.client.AppsV1Api(api_client(kube.kubeconfig))
        wait_replicas(apps, namespace, lambda n: n == 0, 30)

        up: list[float] = []
        down: list[float] = []
        for trial in range(args.trials):
            time.sleep(random.uniform(0.0, 1.0))  # land anywhere within the operator's tick
            for i in range(args.messages):
                r.xadd(settings.stream, {"trial": trial, "i": i})
            published = time.monotonic()
            seen = wait_replicas(apps, namespace, lambda n: n > 0, 30)
            up.append(seen - published)
            r.delete(settings.stream)
            emptied = time.monotonic()
            back = wait_replicas(apps, namespace, lambda n: n == 0, 60)
            down.append(back - emptied)
            print(
                f"trial {trial + 1:2d}: up {up[-1] * 1000:6.0f} ms   back to 0 {down[-1]:5.2f} s", flush=True
            )

    figures = {
        "trials": args.trials,
        "messages": args.messages,
        "autoscale_interval_s": settings.autoscale_interval_s,
        "reaction_ms": {
            "median": statistics.median(up) * 1000,
            "p95": percentile(up, 0.95) * 1000,
            "min": min(up) * 1000,
            "max": max(up) * 1000,
        },
        "scale_to_zero_s": {"median": statistics.median(down), "max": max(down), "window_s": 1.0},
    }
    reaction = figures["reaction_ms"]
    print(
        f"\nbacklog jump -> replica patch over {args.trials} trials "
        f"(operator tick {settings.autoscale_interval_s:g} s): "
        f"median {reaction['median']:.0f} ms, p95 {reaction['p95']:.0f} ms, "
        f"min {reaction['min']:.0f} ms, max {reaction['max']:.0f} ms"
    )
    print(
        f"backlog emptied -> 0 replicas (1 s window, halving steps): "
        f"median {figures['scale_to_zero_s']['median']:.2f} s, max {figures['scale_to_zero_s']['max']:.2f} s"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
