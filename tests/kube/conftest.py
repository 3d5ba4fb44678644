"""Fixtures for tests against a Kubernetes API server: ``kube`` and ``namespace``.

``kube`` (session): a control plane for the whole session. By default a private one: etcd and
kube-apiserver started by ``scripts/cluster.sh up`` in a pytest temp dir on free loopback ports,
with the CRDs of ``deploy/helm/imgflow/crds`` installed (a few seconds), stopped at the end of the
session (and by a watchdog if pytest dies without tearing down). With ``IMGFLOW_KUBECONFIG=PATH``
the tests use that cluster instead (after applying the working tree's CRDs to it) and leave it
running, e.g. after ``make cluster-up``::

    IMGFLOW_KUBECONFIG=.cluster/kubeconfig uv run --frozen pytest tests/kube

``namespace`` (function): a fresh namespace per test, emptied and deleted after it.

What the control plane is, and is not: a real kube-apiserver (admission, validation, CEL rules,
defaulting, server-side apply, watches, RBAC, service-account tokens) with an admin kubeconfig
(``O=system:masters``). Nothing else runs: no kubelet (pods never start), no scheduler, no
controller-manager, so

* Deployments, Jobs and ReplicaSets are stored but make no pods; nothing gets an IP;
* deleted namespaces stay ``Terminating`` (no namespace controller), and nothing garbage-collects
  objects through ownerReferences;
* the aggregated ClusterRoles ``admin``, ``edit`` and ``view`` have no rules (the controller that
  aggregates them is absent): bind explicit Roles/ClusterRoles in RBAC tests;
* no ServiceAccount ``default`` is made in new namespaces (``namespace`` makes one), no token
  Secrets and no ``kube-root-ca.crt`` ConfigMaps; ``kubectl create token SA`` works.

RBAC is real, and the authorizer learns about new (Cluster)RoleBindings from a watch, so poll
``kubectl auth can-i`` for a moment after creating one. ``kubectl wait --for=jsonpath=...`` is a
good way to wait for an operator's status updates.

Typical use (``from imgflow.harness.kube import Kube`` for the type)::

    def test_something(kube: Kube, namespace: str) -> None:
        kube.kubectl("apply", "-n", namespace, "-f", "-", input=manifest)
        job = kube.kubectl_json("get", "imagejob", "batch-1", "-n", namespace)
        assert job["spec"]["operations"]["thumbnail"]["width"] == 100
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgflow.harness.kube import CRDS, Kube, cluster_sh, server_of

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """The session's Kubernetes API server (private unless ``IMGFLOW_KUBECONFIG`` is set)."""
    external = os.environ.get("IMGFLOW_KUBECONFIG")
    if external:
        kubeconfig = Path(external).resolve()
        cluster = Kube(kubeconfig=kubeconfig, server=server_of(kubeconfig))
        # The working tree's CRDs, in case they changed since that cluster got them.
        cluster.kubectl(
            "apply", "--server-side", "--force-conflicts", "--field-manager=imgflow-cluster", "-f", str(CRDS)
        )
        cluster.kubectl("wait", "--for=condition=Established", "--timeout=120s", "-f", str(CRDS))
        yield cluster
        return

    cluster_dir = tmp_path_factory.mktemp("cluster")
    up = cluster_sh(cluster_dir, "up")
    if up.returncode != 0:
        # Once more: on a busy machine a free port can be taken between choosing and binding it.
        cluster_sh(cluster_dir, "down")
        up = cluster_sh(cluster_dir, "up")
    if up.returncode != 0:
        cluster_sh(cluster_dir, "down")
        raise RuntimeError(
            f"scripts/cluster.sh up failed (exit {up.returncode}); logs in {cluster_dir}/logs\n{up.stderr}"
        )
    kubeconfig = cluster_dir / "kubeconfig"
    try:
        yield Kube(kubeconfig=kubeconfig, server=server_of(kubeconfig), cluster_dir=cluster_dir)
    finally:
        down = cluster_sh(cluster_dir, "down")
        # Keep the logs and certificates for a look after the run; the etcd data is large.
        shutil.rmtree(cluster_dir / "etcd", ignore_errors=True)
        if down.returncode != 0:
            raise RuntimeError(f"scripts/cluster.sh down failed:\n{down.stderr}")


def _namespace_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"t-{slug}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A new namespace named after the test (``t-<test name>-<random>``), with a ``default``
    ServiceAccount as a real cluster would have.

    Afterwards every namespaced object in it is deleted (there is no namespace controller to do
    it) and then the namespace itself, without waiting: it stays ``Terminating``, and so does an
    object whose finalizer nobody removes (e.g. an operator's, once the operator is stopped).
    """
    name = _namespace_name(request.node.name)
    kube.kubectl(
        "create",
        "-f",
        "-",
        input=json.dumps(
            {
                "apiVersion": "v1",
                "kind": "List",
                "items": [
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
                    {
                        "apiVersion": "v1",
                        "kind": "ServiceAccount",
                        "metadata": {"name": "default", "namespace": name},
                    },
                ],
            }
        ),
    )
    yield name
    kinds = kube.kubectl("api-resources", "--namespaced", "--verbs=list,delete", "-o", "name").stdout
    # v1 Endpoints only warns that it is deprecated; EndpointSlices are in the list.
    kinds = ",".join(k for k in kinds.split() if k != "endpoints")
    kube.kubectl("delete", kinds, "--all", "-n", name, "--wait=false", "--ignore-not-found", check=False)
    kube.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found", check=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test under tests/kube gets the ``kube`` marker (``pytest -m 'not kube'`` skips them)."""
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.kube)
