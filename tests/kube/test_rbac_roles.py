"""The chart's access policies on a real kube-apiserver. Its aggregated ClusterRoles
(aggregatedRoles.enabled): a user bound in a namespace to the cluster's built-in `view` or `edit`
role may then read, or also write, ImageJobs there, as `kubectl auth can-i --as` answers. Its
NetworkPolicies (networkPolicy.enabled) pass the server's validation; that they refuse traffic is
shown on the node with an enforcer (tests/node/test_network_policy.py).

The session's control plane runs no controller-manager, and it is the ClusterRole aggregation
controller that copies the labelled roles' rules into view/edit/admin: this module runs
kube-controller-manager with that one controller.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator

import pytest

from imgflow.harness.helm_chart import CHART, KUBE_VERSION, helm
from imgflow.harness.kube import Kube
from imgflow.harness.paths import TOOLS

IMAGEJOBS = "imagejobs.imgflow.io"


@pytest.fixture(scope="module")
def aggregation(kube: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    binary = TOOLS / "kube-controller-manager"
    assert binary.exists(), f"{binary} is missing: run scripts/tools.sh kube-controller-manager"
    log = tmp_path_factory.mktemp("controller-manager") / "log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                str(binary),
                f"--kubeconfig={kube.kubeconfig}",
                "--controllers=clusterrole-aggregation",
                "--leader-elect=false",
                "--secure-port=0",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def can(kube: Kube, user: str, verb: str, resource: str, namespace: str, subresource: str = "") -> bool:
    args = ["auth", "can-i", verb, resource, "--as", user, "-n", namespace, f"--subresource={subresource}"]
    proc = kube.kubectl(*args, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode == 0


def wait_until_allowed(kube: Kube, user: str, verb: str, resource: str, namespace: str) -> None:
    """Aggregation and the authorizer's view of new bindings both arrive by watch."""
    deadline = time.monotonic() + 60
    while not can(kube, user, verb, resource, namespace):
        assert time.monotonic() < deadline, f"{user} never may {verb} {resource} in {namespace}"
        time.sleep(0.5)


def chart_part(namespace: str, template: str, *values: str) -> str:
    args = ["template", "rel", str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    for value in values:
        args += ["--set", value]
    return helm(*args, "--show-only", f"templates/{template}").stdout


def chart_roles(namespace: str) -> str:
    return chart_part(namespace, "imagejob-clusterroles.yaml", "aggregatedRoles.enabled=true")


def test_view_and_edit_users_get_imagejobs_through_the_aggregated_roles(
    kube: Kube, namespace: str, aggregation: None
) -> None:
    kube.kubectl("create", "rolebinding", "viewer", "--clusterrole=view", "--user=alice", "-n", namespace)
    kube.kubectl("create", "rolebinding", "editor", "--clusterrole=edit", "--user=bob", "-n", namespace)
    # the built-in roles work (pods are in view), but know nothing of ImageJobs yet
    wait_until_allowed(kube, "alice", "list", "pods", namespace)
    wait_until_allowed(kube, "bob", "create", "configmaps", namespace)
    assert not can(kube, "alice", "list", IMAGEJOBS, namespace)
    assert not can(kube, "bob", "create", IMAGEJOBS, namespace)

    roles = chart_roles(namespace)
    kube.kubectl("apply", "-f", "-", input=roles)
    try:
        wait_until_allowed(kube, "alice", "list", IMAGEJOBS, namespace)
        wait_until_allowed(kube, "bob", "create", IMAGEJOBS, namespace)
        for verb in ("get", "list", "watch"):
            assert can(kube, "alice", verb, IMAGEJOBS, namespace), verb
            assert can(kube, "bob", verb, IMAGEJOBS, namespace), verb
        for verb in ("create", "update", "patch", "delete", "deletecollection"):
            assert not can(kube, "alice", verb, IMAGEJOBS, namespace), verb
            assert can(kube, "bob", verb, IMAGEJOBS, namespace), verb
        assert can(kube, "alice", "get", IMAGEJOBS, namespace, subresource="status")
        assert not can(kube, "bob", "patch", IMAGEJOBS, namespace, subresource="status")  # the operator's
        # the bindings are namespaced: elsewhere neither may
        assert not can(kube, "alice", "list", IMAGEJOBS, "default")
        assert not can(kube, "bob", "create", IMAGEJOBS, "default")
    finally:
        kube.kubectl("delete", "-f", "-", "--ignore-not-found", input=roles, check=False)


@pytest.mark.parametrize(
    ("values", "components"),
    [
        ((), ["api", "worker", "operator", "mongodb", "redis", "seaweedfs"]),
        (
            (
                "networkPolicy.urlSources=false",
                "networkPolicy.kubernetesApiCidrs={10.0.0.1/32}",
                "redis.enabled=false",
                "externalRedis.url=redis://redis.example:6379/0",
            ),
            ["api", "worker", "operator", "mongodb", "seaweedfs"],  # no policy for a Redis not installed
        ),
    ],
    ids=["default", "closed"],
)
def test_the_network_policies_are_valid(
    kube: Kube, namespace: str, values: tuple[str, ...], components: list[str]
) -> None:
    policies = chart_part(namespace, "networkpolicy.yaml", "networkPolicy.enabled=true", *values)
    proc = kube.kubectl("apply", "--dry-run=server", "-n", namespace, "-f", "-", input=policies)
    applied = sorted(line.split()[0] for line in proc.stdout.splitlines() if line.strip())
    assert applied == sorted(f"networkpolicy.networking.k8s.io/rel-imgflow-{c}" for c in components), (
        proc.stdout
    )
