"""Scale-down while a worker pod is busy, with real pods (imgflow.harness.autoscale.busy_scale_down;
the long version is ``python -m bench.node_autoscale --busy``): the operator keeps each worker
pod's ``pod-deletion-cost`` at its jobs in flight, the ReplicaSet removes pods while one runs a
long job, and every pod removed stops on SIGTERM by itself, killing no job.

The workers stop within 5 s here, less than the long job takes (a 20 s fetch, within a fetch
limit of 60 s): a busy pod removed has to give its job back, which the figures count.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgflow.harness import autoscale
from imgflow.harness.helm_chart import helm
from tests.node.conftest import Node, make_deploy
from tests.node.test_chart_on_node import NS, RELEASE


@pytest.fixture(scope="module")
def released(node: Node) -> Iterator[None]:
    make_deploy(
        node,
        NS,
        RELEASE,
        *autoscale.AUTOSCALE_VALUES,
        "--set",
        "config.gracefulTimeoutS=5",
        "--set",
        "config.fetchTimeoutS=60",
    )
    yield
    helm("uninstall", RELEASE, "-n", NS, "--ignore-not-found", kubeconfig=node.kube.kubeconfig)


def test_scale_down_while_a_pod_is_busy_kills_no_job(node: Node, released: None, tmp_path: Path) -> None:
    figures = autoscale.busy_scale_down(
        node.kube.kubeconfig, NS, RELEASE, cycles=3, jobs=12, delay=2.0, long_delay=20.0
    )
    (tmp_path / "busy_scale_down.json").write_text(json.dumps(figures, indent=2))
    for cycle in figures["cycles"]:
        # The scale-down under test happened: pods went while the long job still ran.
        assert cycle["removed_during"] >= 1, cycle
    # No pod was killed holding a job: none taken over by another worker, every removed pod
    # stopped by itself on SIGTERM (exit 0), not at the end of its grace period (137).
    assert figures["interrupted"]["redelivered"] == 0, figures
    exits = [r["exit_code"] for c in figures["cycles"] for r in c["removed"]]
    assert exits and set(exits) == {0}, figures
    # Jobs given back are counted, not yet held at 0: a long job that has only just started costs
    # no more than a short one, and the ReplicaSet may remove its pod, which gives the job back
    # (README.md, Operations, "Scale-down with busy pods").
    print("given back:", figures["interrupted"]["given_back"], "long job:", figures["long_given_back"])
