"""KEDA, built from the Go module proxy and run on the local node beside imgflow's release, for
``bench.keda``: its operator and metrics API server as pods of one local image (as CoreDNS is),
installed from the manifests of KEDA's own ``config/minimal`` (CRDs, RBAC, the two Deployments, the
``v1beta1.external.metrics.k8s.io`` APIService; the operator makes and rotates the certificates).

Built once and cached under ``~/.cache/imgflow/bench-peers/keda-<version>/``: the two binaries
(``go build`` of ``cmd/operator`` and ``cmd/adapter``, static), the module's ``config/`` and the
image's archive (buildah, from scratch, for ``ctr images import``). The node's API server must
serve aggregated APIs (scripts/cluster.sh sets ``--enable-aggregator-routing`` and the
front-proxy certificate).

    python -m bench.peers.keda            # build (a long first build: KEDA has many scalers)
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench.peers.build import CACHE, Unavailable, _run

KEDA = "github.com/kedacore/keda/v2"
KEDA_VERSION = "v2.18.0"
HOME = CACHE / f"keda-{KEDA_VERSION}"
IMAGE = f"imgflow.local/keda:{KEDA_VERSION}"
NAMESPACE = "keda"
BINARIES = {"keda": "./cmd/operator", "keda-adapter": "./cmd/adapter"}


def build() -> Path:
    """The cache directory holding both binaries and ``config/``, built if missing."""
    if all((HOME / name).is_file() for name in BINARIES) and (HOME / "config").is_dir():
        return HOME
    if not shutil.which("go"):
        raise Unavailable("go is not installed")
    with tempfile.TemporaryDirectory(prefix="imgflow-keda-") as tmp:
        info = json.loads(_run(["go", "mod", "download", "-json", f"{KEDA}@{KEDA_VERSION}"], cwd=Path(tmp)))
        source = Path(tmp) / "src"
        shutil.copytree(info["Dir"], source)
        for path in [source, *source.rglob("*")]:  # the module cache's copies are read-only
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
        HOME.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "CGO_ENABLED": "0"}
        for name, package in BINARIES.items():
            built = source / name
            _run(
                ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(built), package],
                cwd=source,
                env=env,
            )
            shutil.move(built, HOME / name)
        shutil.rmtree(HOME / "config", ignore_errors=True)
        shutil.copytree(source / "config", HOME / "config")
    return HOME


def image_archive() -> Path:
    """A docker-archive of ``IMAGE`` (both binaries at /, a non-root user), made once."""
    archive = HOME / f"keda-{KEDA_VERSION}.tar"
    if archive.is_file():
        return archive
    home = build()
    if not shutil.which("buildah"):
        raise Unavailable("buildah is not installed (scripts/images.sh installs it)")
    storage = ["--root", str(HOME / "buildah"), "--runroot", str(HOME / "buildah-run")]
    bah = ["buildah", *storage, "--storage-driver", "overlay"]
    container = _run([*bah, "from", "scratch"]).strip()
    try:
        for name in BINARIES:
            _run([*bah, "copy", "--chmod", "0755", container, str(home / name), f"/{name}"])
        _run([*bah, "config", "--user", "65532:65532", "--entrypoint", '["/keda"]', container])
        _run([*bah, "commit", "-q", container, IMAGE])
    finally:
        subprocess.run([*bah, "rm", container], capture_output=True)
    partial = archive.with_suffix(".tmp")
    partial.unlink(missing_ok=True)
    _run([*bah, "push", "-q", IMAGE, f"docker-archive:{partial}:{IMAGE}"])
    partial.rename(archive)
    return archive


def load_into_node(cluster_dir: Path) -> None:
    """Import the image into the node's containerd (pods use it with imagePullPolicy Never)."""
    socket = cluster_dir / "node" / "containerd.sock"
    ctr = ["ctr", "--address", str(socket), "-n", "k8s.io", "images"]
    if IMAGE in _run([*ctr, "ls", "-q"]).split():
        return
    _run([*ctr, "import", "--no-unpack=false", str(image_archive())])


def manifests(kubectl: Path) -> list[dict[str, Any]]:
    """KEDA's ``config/minimal`` rendered by kubectl's kustomize, its images the local one."""
    rendered = _run([str(kubectl), "kustomize", str(build() / "config" / "minimal")])
    objects = [obj for obj in yaml.safe_load_all(rendered) if obj]
    for obj in objects:
        if obj.get("kind") != "Deployment":
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            container["image"] = IMAGE
            container["imagePullPolicy"] = "Never"
    return objects


def install(kubectl: Path, kubeconfig: Path, timeout_s: float = 300) -> None:
    """KEDA on the node: image loaded, manifests applied, both Deployments available and the
    external metrics API answering through the API server."""
    k = [str(kubectl), f"--kubeconfig={kubeconfig}"]
    load_into_node(kubeconfig.parent)
    listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests(kubectl)})
    subprocess.run(
        [*k, "apply", "--server-side", "--force-conflicts", "-f", "-"],
        input=listing,
        text=True,
        capture_output=True,
        check=True,
    )
    for name in ("keda-operator", "keda-metrics-apiserver"):
        _run([*k, "-n", NAMESPACE, "rollout", "status", f"deployment/{name}", f"--timeout={timeout_s:.0f}s"])
    deadline = time.monotonic() + timeout_s
    while True:
        done = subprocess.run(
            [*k, "get", "--raw", "/apis/external.metrics.k8s.io/v1beta1"], capture_output=True, text=True
        )
        if done.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise Unavailable(f"the external metrics API does not answer: {done.stderr.strip()}")
        time.sleep(1)


def main() -> None:
    try:
        print(f"bench: peer keda: {build()}, image archive {image_archive()}")
    except Unavailable as exc:
        print(f"bench: peer keda is left out: {exc}")


if __name__ == "__main__":
    main()
