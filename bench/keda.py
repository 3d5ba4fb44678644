"""KEDA + HPA measured beside imgflow's operator, the ``--keda`` part of ``make bench``
(``bench/run.sh --node``): the burst cycles of ``imgflow.harness.autoscale`` (wake from zero,
backlog -> replica patch -> first job done, back to zero; a long job during the scale-down) with
the worker Deployment scaled by a KEDA ``ScaledObject`` on the same Redis stream instead of by
imgflow's operator, whose worker scaling is off in this release (it still runs the ImageJobs).

KEDA (``bench.peers.keda``, built from the Go module proxy) runs as pods of a local image on the
node; the HPA controller is the node's kube-controller-manager's (its sync period: 15 s).

    uv run --frozen python -m bench.keda [--install] [--settings defaults tight] [--cycles 3]
        [--busy-cycles 5] [--kubeconfig .cluster/kubeconfig] [--json PATH]

Two ``redis-streams`` triggers, both needed: the consumer group's lag (Redis 7's ``XINFO GROUPS``,
the only mode that wakes a Deployment from zero) and its pending entries. imgflow's workers park
every undelivered entry in the group as soon as one of them runs (``imgflow.core.schedule``), so
the lag alone falls to 0 with one pod up and never calls for a second; pending entries count
what is parked or in flight. ``defaults``: KEDA's and the HPA's defaults (polling every 30 s,
``cooldownPeriod`` 300 s, the HPA's 300 s scale-down stabilization). ``tight``: the smallest
values their documentation allows (polling every 1 s, ``cooldownPeriod`` 0, no stabilization,
scaling by 100 % a second either way).
"""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.node_args import deploy, node_parser, where
from bench.peers import keda
from bench.peers.build import Unavailable
from imgflow.core.settings import Settings
from imgflow.harness.autoscale import KUBECTL, busy_scale_down, kubectl, median_p95, run

# The release of bench.node_autoscale (workers 0 to 3, 2 jobs per worker, stopping within 5 s)
# with the operator's worker scaling off: the ScaledObject owns the replica count.
RELEASE_VALUES = [
    "--set", "worker.autoscaling.enabled=false",
    "--set", "worker.replicas=0",
    "--set", "config.allowPrivateUrls=true",
    "--set", "config.gracefulTimeoutS=5",
    "--set", "config.fetchTimeoutS=60",
]  # fmt: skip
MAX_REPLICAS = 3
PER_REPLICA = 2

FAST = {"type": "Percent", "value": 100, "periodSeconds": 1}
SETTINGS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "tight": {
        "pollingInterval": 1,
        "cooldownPeriod": 0,
        "advanced": {
            "horizontalPodAutoscalerConfig": {
                "behavior": {
                    "scaleUp": {"stabilizationWindowSeconds": 0, "policies": [FAST]},
                    "scaleDown": {"stabilizationWindowSeconds": 0, "policies": [FAST]},
                }
            }
        },
    },
}
# How long the workers may take to get back to 0: the defaults' cooldown and stabilization are
# 300 s each, and the HPA's next sync and KEDA's next poll come on top.
SETTLE_S = {"defaults": 420.0, "tight": 180.0}


def scaled_object(kubeconfig: Path, namespace: str, release: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The ScaledObject of the release's worker Deployment, with ``settings`` in its spec."""
    configmap = kubectl(kubeconfig, "get", "configmap", f"{release}-config", "-n", namespace, "-o", "json")
    config = json.loads(configmap)["data"]
    defaults = Settings.model_fields
    stream = config.get("IMGFLOW_STREAM", defaults["stream"].default)
    group = config.get("IMGFLOW_CONSUMER_GROUP", defaults["consumer_group"].default)
    where = {
        "address": f"{release}-redis.{namespace}.svc.cluster.local:6379",
        "stream": stream,
        "consumerGroup": group,
    }
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": f"{release}-worker", "namespace": namespace},
        "spec": {
            "scaleTargetRef": {"name": f"{release}-worker"},
            "minReplicaCount": 0,
            "maxReplicaCount": MAX_REPLICAS,
            **settings,
            "triggers": [
                {"type": "redis-streams", "metadata": {**where, "lagCount": str(PER_REPLICA)}},
                {"type": "redis-streams", "metadata": {**where, "pendingEntriesCount": str(PER_REPLICA)}},
            ],
        },
    }


def apply_scaled_object(kubeconfig: Path, namespace: str, release: str, name: str) -> None:
    """Replace the ScaledObject with one of ``SETTINGS``; wait until KEDA made its HPA."""
    remove_scaled_object(kubeconfig, namespace, release)
    manifest = scaled_object(kubeconfig, namespace, release, SETTINGS[name])
    kubectl(kubeconfig, "apply", "--server-side", "-f", "-", input=json.dumps(manifest))
    deadline = time.monotonic() + 120
    hpa = f"keda-hpa-{release}-worker"
    while subprocess.run(
        [str(KUBECTL), f"--kubeconfig={kubeconfig}", "get", "hpa", hpa, "-n", namespace], capture_output=True
    ).returncode:
        if time.monotonic() > deadline:
            raise TimeoutError(f"KEDA made no HPA {hpa} within 120 s")
        time.sleep(1)


def remove_scaled_object(kubeconfig: Path, namespace: str, release: str) -> None:
    name = f"{release}-worker"
    kubectl(kubeconfig, "delete", "scaledobject", name, "-n", namespace, "--ignore-not-found")


def table(results: dict[str, dict[str, Any]]) -> str:
    keys = {
        "patch_s": "the replica patch (0 -> 1)",
        "pod_ready_s": "the first new worker pod Ready",
        "first_done_s": "the first job completed (wake from 0)",
        "all_done_s": "the last job completed",
        "zero_s": "(last job done) back to 0 replicas",
    }
    names = [n for n in results if "cycles" in results[n].get("bursts", {})]
    lines = [f"{'from the first job published to':<40}" + "".join(f"{n:>26}" for n in names)]
    for key, label in keys.items():
        cells = []
        for n in names:
            median, p95 = median_p95(results[n]["bursts"], key)
            cells.append(f"{median:7.2f} s (p95 {p95:6.2f})")
        lines.append(f"  {label:<38}" + "".join(f"{c:>26}" for c in cells))
    for n, r in results.items():
        if "bursts" in r:
            b = r["bursts"]
            peak = max(c["max_replicas"] for c in b["cycles"])
            lines.append(f"{n}: {b['jobs']} jobs, interrupted {b['interrupted']}, most replicas {peak}")
        if "busy" in r:
            busy = {k: v for k, v in r["busy"].items() if k != "cycles"}
            lines.append(f"{n}, scale-down with a busy pod: {json.dumps(busy)}")
    return "\n".join(lines)


def main() -> None:
    parser = node_parser(__doc__, "install the release and KEDA first")
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["tight", "defaults"])
    parser.add_argument("--cycles", type=int, default=3, help="burst cycles per settings")
    parser.add_argument("--busy-cycles", type=int, default=5, help="busy scale-down cycles (tight only)")
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--delay", type=float, default=2.0)
    parser.add_argument("--long-delay", type=float, default=20.0)
    args = parser.parse_args()
    release = where(args)
    if args.install:
        try:
            keda.build()
        except Unavailable as exc:
            print(f"bench: KEDA is left out: {exc}")
            return
        deploy(args, RELEASE_VALUES)
        keda.install(KUBECTL, args.kubeconfig)
    results: dict[str, dict[str, Any]] = {}
    for name in args.settings:
        apply_scaled_object(*release, name)
        results[name] = {"scaled_object": SETTINGS[name]}
        settle = SETTLE_S[name]
        results[name]["bursts"] = run(*release, args.cycles, args.jobs, args.delay, settle_s=settle)
        if name == "tight" and args.busy_cycles:
            try:
                results[name]["busy"] = busy_scale_down(
                    *release,
                    args.busy_cycles,
                    args.jobs,
                    args.delay,
                    args.long_delay,
                    settle_s=settle,
                    ready=False,
                    at_least=2,  # the HPA adds pods at its next sync (15 s): a short burst may end at 2
                )
            except TimeoutError as exc:
                results[name]["busy"] = {"not reached": str(exc)}
        print(table(results), flush=True)
    remove_scaled_object(*release)
    if args.json:
        date = datetime.now(UTC).isoformat(timespec="seconds")
        args.json.write_text(json.dumps({"date": date, "settings": results}, indent=2))


if __name__ == "__main__":
    main()
