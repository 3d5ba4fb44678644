"""Upgrades under load (imgflow.harness.upgrade): `make deploy` with new API and worker image tags
(the same images under a new tag in the node's containerd, as a rebuild with a trivial change
gives `helm upgrade`) while clients submit through the API Service with Idempotency-Key retries and
followers stream their jobs' events, resuming with Last-Event-ID. No answer is a 5xx, no
connection is refused, no accepted job is lost or made twice, every follower ends on its job's last
change, the API's PodDisruptionBudget holds, and the workers keep the operator's replica count.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgflow.harness import autoscale, node_faults, upgrade
from imgflow.harness.helm_chart import helm
from tests.node.conftest import Node, make_deploy
from tests.node.test_chart_on_node import NS, RELEASE

# Two API pods under a PodDisruptionBudget; the operator keeps two workers, a count other than a
# new Deployment's (1), which a chart setting the replicas would put back.
VALUES = [
    *autoscale.AUTOSCALE_VALUES,
    *node_faults.FAULT_VALUES,
    "--set", "api.podDisruptionBudget.enabled=true",
    "--set", "worker.autoscaling.minReplicas=2",
    "--set", "worker.autoscaling.maxReplicas=2",
    "--set", "worker.autoscaling.scaleToZero=false",
]  # fmt: skip
# A guard against a hang, no target: on a loaded machine a rollout takes minutes.
pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def released(node: Node) -> Iterator[None]:
    make_deploy(node, NS, RELEASE, *VALUES)
    yield
    helm("uninstall", RELEASE, "-n", NS, "--ignore-not-found", kubeconfig=node.kube.kubeconfig)


def test_an_upgrade_under_load_answers_no_5xx_and_loses_no_job(
    node: Node, released: None, tmp_path: Path
) -> None:
    release = node_faults.Release(node.kube.kubeconfig, NS, RELEASE)
    suffix = uuid.uuid4().hex[:6]
    tags = {c: upgrade.retag(release, upgrade.image_of(release, c), suffix) for c in ("api", "worker")}

    def to_new_tags() -> None:
        make_deploy(node, NS, RELEASE, *VALUES, *(f"--set={c}.image.tag={t}" for c, t in tags.items()))

    figures = upgrade.run(release, to_new_tags)
    (tmp_path / "upgrade_under_load.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps({k: v for k, v in figures.items() if k != "budget_broken"}))

    # The upgrade happened: every API and worker pod left runs the new tag.
    for component, tag in tags.items():
        for pod in autoscale.pods(node.kube.kubeconfig, NS, component):
            if not pod["metadata"].get("deletionTimestamp"):
                assert pod["spec"]["containers"][0]["image"].endswith(f":{tag}"), (component, pod)
    # Clients: no 5xx at all (nothing the upgrade touches is a reason for a 503), no connection
    # refused (a stopping API pod serves until the Service has forgotten it), nothing after retries.
    assert figures["answered_5xx"] == {}, figures
    assert figures["refused"] == 0, figures
    assert figures["client_errors"] == [], figures
    # Jobs: every accepted one completed, once.
    assert figures["accepted"] > 0 and figures["statuses"] == {"completed": figures["accepted"]}, figures
    assert figures["accepted_twice"] == 0 and figures["completed_twice"] == 0, figures
    # Followers: streams cut by the rollout were resumed, and each follower ended on its job's last
    # change with no event repeated or missed.
    assert figures["resumed"] >= 1, figures
    assert figures["stream_problems"] == {}, figures
    # The API PodDisruptionBudget held throughout (sampled twice a second).
    assert figures["samples"] > 0 and figures["api_desired_healthy"] == [1], figures
    assert figures["budget_broken"] == [], figures
    # The workers' replicas stayed the operator's: Helm never wrote them, never below its minimum.
    assert "helm" not in figures["replicas_set_by_seen"], figures
    assert min(figures["worker_replicas_seen"]) >= 2, figures
