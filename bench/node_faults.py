"""Kill anything, lose nothing, the long run (issue 23): ``--jobs`` jobs through the API Service of
a release on the local node while ``--faults`` faults, every kind of
``imgflow.harness.node_faults.FAULTS`` in turn (worker, API and operator pods mid-work, the
Redis and MongoDB-wire server pods, the node's kubelet and containerd), are injected one at a
time; prints accepted, lost, failed, accepted twice, completed twice, client-visible errors, the
drain time after the last fault and each kind's recovery times. tests/node/test_kill_anything.py
runs a short one.

    uv run --frozen python -m bench.node_faults [--jobs 10000] [--faults 100] [--clients 4]
        [--kubeconfig .cluster/kubeconfig] [--namespace imgflow] [--release imgflow] [--install]
        [--json PATH]

``--install`` installs (or upgrades) the release first with ``make deploy``'s script and the
values the scenario needs (autoscaling workers, two API pods). Ctrl-C stops the faults and the new
jobs; what was accepted is then drained and counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

from imgflow.harness.autoscale import AUTOSCALE_VALUES
from imgflow.harness.node_faults import FAULT_VALUES, FAULTS, Fault, Release, run
from imgflow.harness.paths import ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--kubeconfig", type=Path, default=ROOT / ".cluster" / "kubeconfig")
    parser.add_argument("--namespace", default="imgflow")
    parser.add_argument("--release", default="imgflow")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--faults", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--install", action="store_true", help="install/upgrade the release first")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.install:
        env = {
            "CLUSTER_DIR": str(args.kubeconfig.parent),
            "NAMESPACE": args.namespace,
            "RELEASE": args.release,
        }
        subprocess.run(
            [str(ROOT / "scripts" / "deploy.sh"), *AUTOSCALE_VALUES, *FAULT_VALUES],
            env={**os.environ, **env},
            check=True,
        )
    faults = [FAULTS[k % len(FAULTS)] for k in range(args.faults)]

    def progress(fault: Fault) -> None:
        print(json.dumps(asdict(fault)), flush=True)

    release = Release(args.kubeconfig, args.namespace, args.release)
    figures = run(release, args.jobs, faults, clients=args.clients, on_fault=progress)
    figures["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    figures["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {platform.release()}"
    print(json.dumps({k: v for k, v in figures.items() if k != "fault_log"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
