"""The control plane itself (scripts/cluster.sh): real authentication and authorization, as the
operator and Helm tests need them, and an idempotent ``up``.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from imgflow.harness.kube import KUBECTL, Kube, cluster_sh


def test_the_kubeconfig_is_an_admin(kube: Kube) -> None:
    review = kube.kubectl_json("auth", "whoami")
    assert "system:masters" in review["status"]["userInfo"]["groups"]
    assert kube.server.startswith("https://")


def token_kubeconfig(kube: Kube, token: str, path: Path) -> Path:
    """A kubeconfig for the same server that authenticates with a bearer token only."""
    config = kube.kubectl_json("config", "view", "--raw", "--minify")
    config["users"] = [{"name": "token", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "token"
    path.write_text(json.dumps(config))
    return path


def as_token(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(KUBECTL), f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True, timeout=60
    )


def can_i(kube: Kube, user: str, *args: str) -> bool:
    proc = kube.kubectl("auth", "can-i", *args, f"--as={user}", check=False)
    assert proc.stdout.strip().startswith(("yes", "no")), proc.stderr
    return proc.stdout.strip() == "yes"


def test_service_account_tokens_are_authenticated_and_rbac_authorizes_them(
    kube: Kube, namespace: str, tmp_path: Path
) -> None:
    kube.kubectl("create", "serviceaccount", "robot", "-n", namespace)
    token = kube.kubectl("create", "token", "robot", "-n", namespace, "--duration=10m").stdout.strip()
    robot = token_kubeconfig(kube, token, tmp_path / "robot.kubeconfig")
    user = f"system:serviceaccount:{namespace}:robot"

    whoami = as_token(robot, "auth", "whoami", "-o", "json")
    assert whoami.returncode == 0, whoami.stderr
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == user

    refused = as_token(robot, "get", "imagejobs", "-n", namespace)
    assert refused.returncode != 0
    assert "Forbidden" in refused.stderr, refused.stderr
    assert not can_i(kube, user, "list", "imagejobs.imgflow.io", "-n", namespace)

    kube.kubectl(
        "create", "role", "ij-reader", "-n", namespace, "--verb=get,list,watch", "--resource=imagejobs"
    )
    kube.kubectl(
        "create",
        "rolebinding",
        "robot-reads",
        "-n",
        namespace,
        "--role=ij-reader",
        f"--serviceaccount={namespace}:robot",
    )
    # The authorizer learns of the binding from a watch: poll.
    deadline = time.monotonic() + 60
    while not can_i(kube, user, "list", "imagejobs.imgflow.io", "-n", namespace):
        assert time.monotonic() < deadline, "the RoleBinding never took effect"
        time.sleep(0.2)

    allowed = as_token(robot, "get", "imagejobs", "-n", namespace)
    assert allowed.returncode == 0, allowed.stderr
    assert not can_i(kube, user, "create", "imagejobs.imgflow.io", "-n", namespace)
    assert not can_i(kube, user, "list", "imagejobs.imgflow.io", "-n", "default")
    assert not can_i(kube, user, "list", "secrets", "-n", namespace)


def test_the_node_authorizer_is_on(kube: Kube) -> None:
    node = ("system:node:node-1", "--as-group=system:nodes")
    assert can_i(kube, node[0], "get", "nodes/node-1", node[1])
    assert not can_i(kube, node[0], "get", "nodes/node-2", node[1])


@pytest.fixture
def cluster_dir(kube: Kube) -> Path:
    if kube.cluster_dir is None:
        pytest.skip("a cluster from IMGFLOW_KUBECONFIG: scripts/cluster.sh does not manage it here")
    return kube.cluster_dir


def test_up_again_changes_nothing_and_status_reports_ready(kube: Kube, cluster_dir: Path) -> None:
    pids = {p.name: p.read_text() for p in (cluster_dir / "run").glob("*.pid")}
    assert set(pids) == {"etcd.pid", "kube-apiserver.pid", "watchdog.pid"}
    kubeconfig = kube.kubeconfig.read_text()

    up = cluster_sh(cluster_dir, "up")
    assert up.returncode == 0, up.stderr
    assert "starting" not in up.stderr
    assert {p.name: p.read_text() for p in (cluster_dir / "run").glob("*.pid")} == pids
    assert kube.kubeconfig.read_text() == kubeconfig

    status = cluster_sh(cluster_dir, "status")
    assert status.returncode == 0, status.stderr
    assert "readyz:         ok" in status.stdout
    assert kube.server in status.stdout
