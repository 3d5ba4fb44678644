"""Autoscaling with real pods, the ``--node`` part of ``make bench`` (``bench/run.sh --node``):
the scenario of ``imgflow.harness.autoscale`` (also run by tests/node/test_chart_on_node.py),
printed next to what KEDA + HPA's defaults imply.

    uv run --frozen python -m bench.node_autoscale [--cycles 5] [--jobs 12] [--delay 2] [--json PATH]
        [--kubeconfig .cluster/kubeconfig] [--namespace imgflow] [--release imgflow] [--install]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

from imgflow.harness.autoscale import AUTOSCALE_VALUES, run, summary
from imgflow.harness.paths import ROOT


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--kubeconfig", type=Path, default=ROOT / ".cluster" / "kubeconfig")
    parser.add_argument("--namespace", default="imgflow")
    parser.add_argument("--release", default="imgflow")
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--delay", type=float, default=2.0)
    parser.add_argument(
        "--install", action="store_true", help="install/upgrade the release first (scripts/deploy.sh)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.install:
        env = {
            "CLUSTER_DIR": str(args.kubeconfig.parent),
            "NAMESPACE": args.namespace,
            "RELEASE": args.release,
        }
        subprocess.run(
            [str(ROOT / "scripts" / "deploy.sh"), *AUTOSCALE_VALUES], env={**os.environ, **env}, check=True
        )
    figures = run(args.kubeconfig, args.namespace, args.release, args.cycles, args.jobs, args.delay)
    figures["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    print(summary(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
