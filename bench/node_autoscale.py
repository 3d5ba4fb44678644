"""Autoscaling with real pods, the ``--node`` part of ``make bench`` (``bench/run.sh --node``):
the scenario of ``imgflow.harness.autoscale`` (also run by tests/node/test_chart_on_node.py),
printed next to what KEDA + HPA's defaults imply.

    uv run --frozen python -m bench.node_autoscale [--cycles 5] [--jobs 12] [--delay 2] [--json PATH]
        [--kubeconfig .cluster/kubeconfig] [--namespace imgflow] [--release imgflow] [--install]
        [--busy [--long-delay 20]]

``--busy`` runs the scale-down with a busy pod instead (``busy_scale_down``: each cycle a long job
runs while the operator scales down; per cycle the pods removed with their deletion cost and the
other pods' then, the pods that ran the long job, its attempts, jobs interrupted); with
``--install`` the workers then stop within 5 s (``config.gracefulTimeoutS``) and a fetch may take
60 s.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from bench.node_args import deploy, node_parser, where
from imgflow.harness.autoscale import AUTOSCALE_VALUES, busy_scale_down, run, summary


def main() -> None:
    parser = node_parser(__doc__, "install/upgrade the release first (scripts/deploy.sh)")
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--delay", type=float, default=2.0)
    parser.add_argument("--busy", action="store_true", help="scale down while a pod holds a long job")
    parser.add_argument("--long-delay", type=float, default=20.0)
    args = parser.parse_args()
    busy = ["--set", "config.gracefulTimeoutS=5", "--set", "config.fetchTimeoutS=60"]
    if args.install:
        deploy(args, [*AUTOSCALE_VALUES, *(busy if args.busy else [])])
    if args.busy:
        figures = busy_scale_down(*where(args), args.cycles, args.jobs, args.delay, args.long_delay)
        print(busy_table(figures))
        print(json.dumps({k: v for k, v in figures.items() if k != "cycles"}, indent=2))
    else:
        figures = run(*where(args), args.cycles, args.jobs, args.delay)
        print(summary(figures))
    figures["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


def busy_table(figures: dict[str, Any]) -> str:
    """One line per cycle: each pod removed (* while the long job ran on it) with its deletion cost
    and the costs of the pods left then, as the API showed them; the long job's pods and attempts."""
    lines = []
    for i, cycle in enumerate(figures["cycles"], 1):
        long_pods = cycle["long_pods"]
        removed = []
        for r in sorted(cycle["removed"], key=lambda r: r["marked"]):
            mark = "*" if r["pod"] in long_pods[:-1] else ""
            others = ", ".join(f"{n[-5:]}={c}" for n, c in sorted(r["others"].items()))
            removed.append(f"{r['pod'][-5:]}{mark}={r['cost']} (left: {others})")
        lines.append(
            f"cycle {i}: long job on {' -> '.join(p[-5:] for p in long_pods)}, attempts "
            f"{cycle['long_attempts']}, given back {cycle['long_given_back']}, interrupted "
            f"{cycle['interrupted']}; removed: {'; '.join(removed)}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
