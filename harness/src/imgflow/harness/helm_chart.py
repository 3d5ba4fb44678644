"""Helm for the chart tests (tests/test_chart_render.py, tests/kube/test_chart.py) and the operator
under its chart RBAC (``imgflow.harness.operator``).

``helm()`` runs .tools/bin/helm with a private HOME (its config, cache and the kube discovery cache
stay out of the user's), ``render()`` runs ``helm template`` and parses the documents, and
``restricted_violations()`` checks a pod spec against the "restricted" Pod Security Standard.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

from imgflow.harness.paths import ROOT, TOOLS

CHART = ROOT / "deploy" / "helm" / "imgflow"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"
HELM = TOOLS / "helm"
_HOME = Path(tempfile.mkdtemp(prefix="imgflow-helm-home-"))
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)


def kubernetes_version() -> str:
    """The Kubernetes version the repository builds (scripts/versions.env), e.g. 1.36.3.

    ``helm template`` and ``helm lint`` get it as --kube-version: a helm built without the release
    ldflags would otherwise assume Kubernetes 1.20 and refuse the chart's kubeVersion.
    """
    for line in (ROOT / "scripts" / "versions.env").read_text().splitlines():
        if line.startswith("KUBERNETES_VERSION="):
            return line.split("=", 1)[1].strip().lstrip("v")
    raise RuntimeError("KUBERNETES_VERSION missing from scripts/versions.env")


KUBE_VERSION = kubernetes_version()


class HelmError(subprocess.CalledProcessError):
    def __str__(self) -> str:
        return f"{super().__str__()}\nstdout: {self.stdout}\nstderr: {self.stderr}"


def helm(
    *args: str, check: bool = True, kubeconfig: Path | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """Run helm; with ``check`` a failure raises ``HelmError`` carrying its output."""
    env = {
        **os.environ,
        "HOME": str(_HOME),
        "HELM_CONFIG_HOME": str(_HOME / "config"),
        "HELM_CACHE_HOME": str(_HOME / "cache"),
        "HELM_DATA_HOME": str(_HOME / "data"),
    }
    cmd = [str(HELM), *args]
    if kubeconfig is not None:
        cmd.append(f"--kubeconfig={kubeconfig}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise HelmError(proc.returncode, cmd, proc.stdout, proc.stderr)
    return proc


def values_file(values: dict[str, Any], directory: Path) -> Path:
    path = directory / f"values-{len(list(directory.glob('values-*.yaml')))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def template_args(
    values: dict[str, Any] | None = None, *, files: Iterable[Path] = (), directory: Path | None = None
) -> list[str]:
    """-f arguments for value files and an inline values dict (written to ``directory``)."""
    args: list[str] = []
    for f in files:
        args += ["-f", str(f)]
    if values:
        if directory is None:
            directory = Path(tempfile.mkdtemp(prefix="imgflow-values-"))
        args += ["-f", str(values_file(values, directory))]
    return args


def render(
    values: dict[str, Any] | None = None,
    *,
    files: Iterable[Path] = (),
    release: str = "rel",
    namespace: str = "imgflow",
) -> list[dict[str, Any]]:
    """``helm template`` the chart; the parsed documents (empty ones dropped)."""
    out = helm(
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
        *template_args(values, files=files),
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(``Kind/name``, pod spec) of every pod the documents would run."""
    for d in docs:
        if d["kind"] == "Pod":
            yield f"Pod/{d['metadata']['name']}", d["spec"]
        elif d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]


def restricted_violations(spec: dict[str, Any]) -> list[str]:
    """What keeps a pod spec from the "restricted" Pod Security Standard, plus the chart's own
    rules (a fixed non-root UID, read-only root filesystem); empty if nothing does."""
    problems: list[str] = []
    pod_sc = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"{field} is set")
    if pod_sc.get("runAsNonRoot") is not True:
        problems.append("pod securityContext.runAsNonRoot is not true")
    uid = pod_sc.get("runAsUser")
    if not isinstance(uid, int) or uid == 0:
        problems.append(f"pod securityContext.runAsUser is not a fixed non-root UID: {uid!r}")
    if (pod_sc.get("seccompProfile") or {}).get("type") not in ("RuntimeDefault", "Localhost"):
        problems.append("pod seccompProfile is not RuntimeDefault/Localhost")
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            problems.append(f"volume {volume['name']} is a hostPath")
    containers = (spec.get("initContainers") or []) + spec["containers"]
    for c in containers:
        sc = c.get("securityContext") or {}
        where = f"container {c['name']}"
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if sc.get("privileged"):
            problems.append(f"{where}: privileged")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            problems.append(f"{where}: capabilities do not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: adds capabilities {caps['add']}")
        if sc.get("runAsNonRoot") is False or sc.get("runAsUser") == 0:
            problems.append(f"{where}: may run as root")
        if sc.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: root filesystem is writable")
        profile = (sc.get("seccompProfile") or {}).get("type")
        if profile is not None and profile not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile {profile}")
        for port in c.get("ports") or []:
            if "hostPort" in port:
                problems.append(f"{where}: hostPort")
    return problems
