"""A Kubernetes API server to test and bench against: ``Kube`` (kubectl with an admin kubeconfig)
and ``cluster_sh`` (scripts/cluster.sh for a private control plane, or the whole one-node
cluster). The pytest fixtures that start one per session are in tests/kube/conftest.py."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgflow.harness.paths import ROOT, TOOLS

KUBECTL = TOOLS / "kubectl"
CLUSTER_SH = ROOT / "scripts" / "cluster.sh"
CRDS = ROOT / "deploy" / "helm" / "imgflow" / "crds"


class KubectlError(subprocess.CalledProcessError):
    """A kubectl command failed; ``str()`` includes its stderr, so a failing test says why."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {(self.stderr or '').strip()}"


@dataclass(frozen=True)
class Kube:
    """A Kubernetes API server and an admin (``system:masters``) kubeconfig for it."""

    kubeconfig: Path
    """Admin kubeconfig; give it to a process as ``KUBECONFIG`` (see ``env()``)."""
    server: str
    """The API server's URL, e.g. ``https://127.0.0.1:41234``."""
    cluster_dir: Path | None = None
    """The private control plane's ``scripts/cluster.sh`` directory (logs/ has the server logs);
    ``None`` for a cluster given by ``IMGFLOW_KUBECONFIG``."""

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run ``.tools/bin/kubectl --kubeconfig KUBECONFIG ARGS...``; text in, text out.

        ``input`` is fed to stdin (``kubectl apply -f - ...``). With ``check`` (the default) a
        non-zero exit raises ``KubectlError`` carrying stderr; with ``check=False`` look at
        ``returncode`` and ``stderr`` yourself, e.g. to assert that the API server refused
        something.
        """
        cmd = [str(KUBECTL), f"--kubeconfig={self.kubeconfig}"]
        if self.cluster_dir is not None:
            # Discovery cached per private cluster: a port reused by a later session must not
            # see an earlier session's resource list.
            cmd.append(f"--cache-dir={self.cluster_dir / 'kube-cache'}")
        cmd += args
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def kubectl_json(self, *args: str, input: str | None = None) -> Any:
        """``kubectl ARGS... -o json``, parsed; e.g. ``kube.kubectl_json("get", "ij", "a", "-n", ns)``."""
        return json.loads(self.kubectl(*args, "-o", "json", input=input).stdout)

    def env(self) -> dict[str, str]:
        """This process's environment plus ``KUBECONFIG``: for starting an operator or helm."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}


def server_of(kubeconfig: Path) -> str:
    jsonpath = "jsonpath={.clusters[0].cluster.server}"
    cmd = [str(KUBECTL), f"--kubeconfig={kubeconfig}", "config", "view", "--minify", "-o", jsonpath]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()


def cluster_sh(
    cluster_dir: Path, *args: str, node: bool = False, owner: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``scripts/cluster.sh ARGS...`` for the private cluster in ``cluster_dir``: the API
    server alone, or with ``node`` the whole one-node cluster (tests/node). With ``owner`` the
    cluster stops when this process ends; without, an ``up`` of a running cluster (starting what
    of it stopped) leaves its lifetime as it was."""
    env = {
        **os.environ,
        "CLUSTER_NODE": "1" if node else "0",
        "CLUSTER_DIR": str(cluster_dir),
        "CLUSTER_APISERVER_PORT": "auto",
        "CLUSTER_ETCD_PORT": "auto",
        "CLUSTER_ETCD_PEER_PORT": "auto",
    }
    if owner:  # if pytest dies without its teardown, a watchdog stops the control plane
        env["CLUSTER_OWNER_PID"] = str(os.getpid())
    else:
        env.pop("CLUSTER_OWNER_PID", None)
    return subprocess.run(
        [str(CLUSTER_SH), *args], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )
