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

import json
import os
import platform
from dataclasses import asdict
from datetime import UTC, datetime

from bench.node_args import deploy, node_parser, where
from imgflow.harness.autoscale import AUTOSCALE_VALUES
from imgflow.harness.node_faults import FAULT_VALUES, FAULTS, Fault, Release, run


def main() -> None:
    parser = node_parser(__doc__, "install/upgrade the release first")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--faults", type=int, default=100)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    if args.install:
        deploy(args, [*AUTOSCALE_VALUES, *FAULT_VALUES])
    faults = [FAULTS[k % len(FAULTS)] for k in range(args.faults)]

    def progress(fault: Fault) -> None:
        print(json.dumps(asdict(fault)), flush=True)

    release = Release(*where(args))
    figures = run(release, args.jobs, faults, clients=args.clients, on_fault=progress)
    figures["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    figures["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {platform.release()}"
    print(json.dumps({k: v for k, v in figures.items() if k != "fault_log"}, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
