"""Kill anything, lose nothing (imgflow.harness.node_faults; the long version is ``python -m
bench.node_faults``): under a steady load through the API Service, one fault of each kind (a worker
pod holding a job, an API pod during uploads, the operator pod, the Redis and MongoDB-wire server
pods force-deleted; the node's kubelet and containerd restarted), and every accepted job completes
once, with no client seeing an error after its retries and no job accepted twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgflow.harness import autoscale, node_faults
from imgflow.harness.helm_chart import helm
from tests.node.conftest import Node, make_deploy
from tests.node.test_chart_on_node import NS, RELEASE

# A guard against a hang, no target: on a loaded machine a restarted pod takes a minute to start.
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def released(node: Node) -> Iterator[None]:
    make_deploy(node, NS, RELEASE, *autoscale.AUTOSCALE_VALUES, *node_faults.FAULT_VALUES)
    yield
    helm("uninstall", RELEASE, "-n", NS, "--ignore-not-found", kubeconfig=node.kube.kubeconfig)


def test_killing_pods_and_node_processes_under_load_loses_no_job(
    node: Node, released: None, tmp_path: Path
) -> None:
    release = node_faults.Release(node.kube.kubeconfig, NS, RELEASE)
    figures = node_faults.run(release, 64, list(node_faults.FAULTS), clients=4)
    (tmp_path / "kill_anything.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps({k: v for k, v in figures.items() if k != "fault_log"}))
    assert figures["faults"] == dict.fromkeys(node_faults.FAULTS, 1), figures
    # the worker pod killed held a job: the fault under test happened
    assert figures["faults_in_condition"].get("worker") == 1, figures
    assert figures["client_errors"] == 0, figures
    assert figures["accepted"] == 64, figures
    assert figures["drained"], figures
    assert figures["lost"] == 0, figures
    assert figures["failed"] == 0, figures
    assert figures["completed_twice"] == 0, figures
    # A retry of an upload whose API pod died after recording the job is answered with that job
    # (the Idempotency-Key's pending mark names it), never with a second one.
    assert figures["accepted_twice"] == 0, figures
