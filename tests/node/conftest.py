"""A real one-node Kubernetes cluster for the session: ``scripts/cluster.sh up`` with the node
(kubelet, containerd + runc, kube-proxy, CoreDNS, controller-manager, scheduler) in a pytest temp
dir, the images of ``make images`` loaded into it. At the end ``down --purge``, and the test run
fails if anything of the node is left on the machine (process, veth, route, cgroup or mount).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from imgflow.harness.kube import KUBECTL, Kube, cluster_sh, server_of
from imgflow.harness.paths import ROOT

IMAGES_ENV = ROOT / ".tools" / "images.env"
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Node:
    """The session's cluster with its node."""

    kube: Kube
    dir: Path

    @property
    def holder(self) -> int:
        """The process holding the node's network and mount namespaces."""
        return int((self.dir / "run" / "node-ns.pid").read_text())

    def run_in_node(self, *cmd: str) -> subprocess.CompletedProcess[str]:
        """A command in the node's network namespace (where kubelet and kube-proxy run)."""
        return subprocess.run(
            ["nsenter", f"--target={self.holder}", "--net", "--", *cmd],
            capture_output=True,
            text=True,
            timeout=60,
        )


def images() -> dict[str, str]:
    """``NAME -> reference`` of the images ``scripts/images.sh`` built (``api``, ``worker``, ...)."""
    refs = {}
    for line in IMAGES_ENV.read_text().splitlines():
        if m := re.fullmatch(r"([A-Z_]+)_IMAGE=(\S+)", line):
            refs[m[1].lower()] = m[2]
    return refs


def leftovers(cluster_dir: Path) -> list[str]:
    """What of the cluster in ``cluster_dir`` is still on the machine."""
    found = []
    node_id = hashlib.sha256(str(cluster_dir).encode()).hexdigest()[:6]
    octet = int(node_id[:4], 16) % 200 + 20
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if state != "Z" and str(cluster_dir) in args:
                found.append(f"process {proc.name}: {args[:200]}")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [f"link {line.split(':')[1].strip()}" for line in links.splitlines() if f"imgf{node_id}" in line]
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    found += [f"route {r}" for r in routes.splitlines() if r.startswith(f"10.244.{octet}.")]
    found += [f"cgroup {p}" for p in Path("/sys/fs/cgroup").glob(f"*/imgflow-{node_id}")]
    mounts = Path("/proc/self/mounts").read_text()
    found += [f"mount {m}" for m in mounts.splitlines() if str(cluster_dir) in m]
    return found


@pytest.fixture(scope="session")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    if not IMAGES_ENV.exists():
        raise RuntimeError("no images: run `make images` (make test does) before tests/node")
    cluster_dir = tmp_path_factory.mktemp("node")
    up = cluster_sh(cluster_dir, "up", node=True)
    if up.returncode != 0:
        cluster_sh(cluster_dir, "down", node=True)
        raise RuntimeError(f"cluster.sh up failed; logs in {cluster_dir}/logs\n{up.stderr[-4000:]}")
    kubeconfig = cluster_dir / "kubeconfig"
    try:
        yield Node(Kube(kubeconfig, server_of(kubeconfig), cluster_dir), cluster_dir)
    finally:
        logs = tmp_path_factory.getbasetemp() / "node-logs"
        shutil.copytree(cluster_dir / "logs", logs, dirs_exist_ok=True)
        down = cluster_sh(cluster_dir, "down", "--purge", node=True)
        assert down.returncode == 0, down.stderr
        assert not cluster_dir.exists()
        left = leftovers(cluster_dir)
        assert left == [], f"`cluster.sh down` left these behind: {left}"


def make_deploy(node: Node, namespace: str, release: str, *extra: str) -> str:
    """``make deploy`` on the node (scripts/deploy.sh, ``extra`` given to helm); what it printed."""
    env = {**os.environ, "CLUSTER_DIR": str(node.dir), "NAMESPACE": namespace, "RELEASE": release}
    done = subprocess.run(
        [str(ROOT / "scripts" / "deploy.sh"), *extra], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return done.stdout


@dataclass
class Forward:
    """A running ``kubectl port-forward``; ``url`` is where it listens on loopback."""

    process: subprocess.Popen[str]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def port_forward(kube: Kube, namespace: str, target: str, remote_port: int) -> Iterator[Forward]:
    """``kubectl port-forward TARGET :REMOTE_PORT`` on a free local port, for as long as the block."""
    cmd = [str(KUBECTL), f"--kubeconfig={kube.kubeconfig}", "-n", namespace, "port-forward", target]
    process = subprocess.Popen(
        [*cmd, f":{remote_port}"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # "Forwarding from 127.0.0.1:41234 -> 8000"
        m = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert m, f"kubectl port-forward said: {line}{process.stdout.read() if process.poll() else ''}"
        yield Forward(process, int(m[1]))
    finally:
        process.terminate()
        process.wait(10)


def wait_until(what: str, check: object, within: float = 120.0, every: float = 0.5) -> object:
    """Poll ``check()`` until it returns something truthy; that value, or AssertionError naming ``what``."""
    assert callable(check)
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f}s: {what}")
        time.sleep(every)


def pod_json(kube: Kube, namespace: str, selector: str) -> list[dict[str, object]]:
    pods = json.loads(kube.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout)
    items: list[dict[str, object]] = pods["items"]
    return items


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/node gets the ``node`` marker (``pytest -m 'not node'`` skips them)."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.node)
