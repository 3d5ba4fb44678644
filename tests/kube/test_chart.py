"""The Helm chart against a real kube-apiserver (fixture ``kube``; no kubelet, so no pod runs).

``helm install --dry-run=server`` first (every object through the API server's validation and
admission without storing it), then a real install, an upgrade with changed values, an uninstall
that leaves nothing of the release behind, and the operator's RBAC checked with
``kubectl auth can-i`` as its ServiceAccount. Never ``--wait`` (pods never become ready here) and
never ``helm test`` (its pod would never run); tests/test_chart_render.py checks what it renders.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from redis import Redis

from imgflow.harness.helm_chart import CHART, PRODUCTION_VALUES, helm, template_args
from imgflow.harness.kube import Kube

RELEASE = "imgflow"  # contains the chart name, so objects are named imgflow-<component>
API, WORKER, OPERATOR = "imgflow-api", "imgflow-worker", "imgflow-operator"

# Namespaced kinds the chart creates (or could, with the values used here), checked after uninstall.
NAMESPACED_KINDS = (
    "deployments.apps",
    "services",
    "configmaps",
    "secrets",
    "serviceaccounts",
    "roles.rbac.authorization.k8s.io",
    "rolebindings.rbac.authorization.k8s.io",
    "poddisruptionbudgets.policy",
    "ingresses.networking.k8s.io",
    "pods",
)
CLUSTER_KINDS = ("clusterroles.rbac.authorization.k8s.io", "clusterrolebindings.rbac.authorization.k8s.io")

# Production-style values the test API server can take: everything of ci/production-values.yaml
# except the ServiceMonitor and PrometheusRule (the monitoring.coreos.com CRDs are not installed here).
SERVER_PRODUCTION: dict[str, Any] = {
    "serviceMonitor": {"enabled": False},
    "prometheusRule": {"enabled": False},
}


def _helm(kube: Kube, *args: str) -> str:
    return helm(*args, kubeconfig=kube.kubeconfig).stdout


def _install(kube: Kube, ns: str, *args: str) -> str:
    return _helm(kube, "install", RELEASE, str(CHART), "--namespace", ns, *args)


def _objects(manifest: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(manifest) if d]


def _get(kube: Kube, ns: str, kind: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = kube.kubectl_json("get", kind, name, "-n", ns)
    return obj


def _leftovers(kube: Kube, ns: str) -> list[str]:
    """Everything of the release still in the cluster, as kind/name."""
    found = kube.kubectl(
        "get", ",".join(NAMESPACED_KINDS), "-n", ns, "-o", "name", "--ignore-not-found"
    ).stdout.split()
    # the namespace fixture's ServiceAccount is not ours
    found = [f for f in found if f != "serviceaccount/default"]
    found += kube.kubectl(
        "get", ",".join(CLUSTER_KINDS), "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name"
    ).stdout.split()
    # cluster-scoped objects of this namespace's release, whatever their labels
    found += [
        name
        for name in kube.kubectl("get", ",".join(CLUSTER_KINDS), "-o", "name").stdout.split()
        if name.split("/", 1)[1].startswith(f"{ns}-")
    ]
    return sorted(set(found))


def _cluster_scoped_kinds(kube: Kube) -> set[str]:
    """Kinds of every cluster-scoped resource the API server serves (ClusterRole, Namespace, ...)."""
    table = kube.kubectl("api-resources", "--namespaced=false", "--no-headers").stdout
    return {line.split()[-1] for line in table.splitlines() if line.strip()}


@pytest.fixture
def tmp_values(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def uninstall_after(kube: Kube, namespace: str) -> Iterator[None]:
    """Uninstalls the release if a test left it installed."""
    yield
    helm("uninstall", RELEASE, "--namespace", namespace, "--ignore-not-found", kubeconfig=kube.kubeconfig)


def test_server_side_dry_run_then_install_upgrade_uninstall(
    kube: Kube, namespace: str, tmp_values: Path, uninstall_after: None
) -> None:
    ns = namespace
    # 1. Every object through the API server's validation, nothing stored.
    dry = _install(kube, ns, "--dry-run=server")
    assert "STATUS: pending-install" in dry
    assert kube.kubectl("get", "deployments", "-n", ns, "-o", "name").stdout.strip() == ""

    # 2. The real install: what helm says it installed is in the cluster.
    out = _install(kube, ns)
    assert "STATUS: deployed" in out
    # NOTES.txt tells the user what to do next
    for hint in (
        f"port-forward svc/{API}",
        "/api/image-processing/jobs",
        f"-n {ns} get imagejobs",
        "WARNING",
        "jsonpath='{.data.admin-key}' | base64 -d",  # how to read the generated admin key
        'Authorization: Bearer $KEY"',
    ):
        assert hint in out, hint
    manifest = _objects(_helm(kube, "get", "manifest", RELEASE, "--namespace", ns))
    assert {(o["kind"], o["metadata"]["name"]) for o in manifest} >= {
        ("Deployment", API),
        ("Deployment", WORKER),
        ("Deployment", OPERATOR),
        ("Deployment", "imgflow-redis"),
        ("Deployment", "imgflow-mongodb"),
        ("Deployment", "imgflow-seaweedfs"),  # the default storage: s3 on the dev SeaweedFS
        ("Service", "imgflow-seaweedfs"),
        ("Role", OPERATOR),
        ("RoleBinding", OPERATOR),
    }
    # Nothing cluster-scoped, by the API server's own account of which kinds are.
    assert not [o for o in manifest if o["kind"] in _cluster_scoped_kinds(kube)]
    for o in manifest:
        kind = o["kind"].lower()
        assert (
            _get(kube, ns, kind, o["metadata"]["name"])["metadata"]["labels"]["app.kubernetes.io/instance"]
            == RELEASE
        )
    # the test hook is not created by install (and would not run here)
    assert kube.kubectl("get", "pods", "-n", ns, "-o", "name").stdout.strip() == ""
    worker = _get(kube, ns, "deployment", WORKER)
    assert worker["metadata"]["labels"]["imgflow.io/autoscale"] == "true"
    assert worker["spec"]["replicas"] == 1  # the API server's default: the chart leaves it to the operator

    generated = _get(kube, ns, "secret", "imgflow-connections")["data"]
    assert {"admin-key", "s3-access-key-id", "s3-secret-access-key"} <= set(generated)

    # 3. The operator scales the workers (here: kubectl, as the operator would)...
    kube.kubectl("scale", "deployment", WORKER, "--replicas=3", "-n", ns)
    # ...and an upgrade with changed values applies them without undoing that.
    changed = {
        "api": {"replicas": 2},
        "config": {"workerConcurrency": 4},
        "worker": {"autoscaling": {"maxReplicas": 20}},
    }
    out = _helm(
        kube,
        "upgrade",
        RELEASE,
        str(CHART),
        "--namespace",
        ns,
        *template_args(changed, directory=tmp_values),
    )
    assert "STATUS: deployed" in out and "REVISION: 2" in out
    assert _get(kube, ns, "deployment", API)["spec"]["replicas"] == 2
    worker = _get(kube, ns, "deployment", WORKER)
    assert worker["metadata"]["annotations"]["imgflow.io/max-replicas"] == "20"
    assert worker["spec"]["replicas"] == 3, "helm upgrade reset the replica count the operator chose"
    config = _get(kube, ns, "configmap", "imgflow-config")
    assert config["data"]["IMGFLOW_WORKER_CONCURRENCY"] == "4"
    # the generated admin key and S3 pair were read back (lookup), not made anew: the dev
    # SeaweedFS and the pods still agree, and its objects stay readable
    assert _get(kube, ns, "secret", "imgflow-connections")["data"] == generated
    history = _helm(kube, "history", RELEASE, "--namespace", ns, "-o", "yaml")
    assert [h["status"] for h in yaml.safe_load(history)] == ["superseded", "deployed"]

    # 4. Uninstall: nothing of the release is left; the CRD stays (Helm never deletes crds/).
    out = _helm(kube, "uninstall", RELEASE, "--namespace", ns)
    assert "uninstalled" in out
    assert _leftovers(kube, ns) == []
    release_secrets = kube.kubectl("get", "secrets", "-n", ns, "-l", "owner=helm", "-o", "name").stdout
    assert release_secrets.strip() == ""
    kube.kubectl("get", "crd", "imagejobs.imgflow.io")


def test_production_values_install_with_an_existing_secret(
    kube: Kube, namespace: str, tmp_values: Path, uninstall_after: None
) -> None:
    """External databases via the user's own Secret, Ingress, PDBs, the dashboard, 3 API pods."""
    ns = namespace
    kube.kubectl(
        "create",
        "secret",
        "generic",
        "imgflow-connections-prod",
        "-n",
        ns,
        "--from-literal=redis-url=redis://redis.example:6379/0",
        "--from-literal=mongodb-url=mongodb://mongo.example:27017",
    )
    prod = yaml.safe_load(PRODUCTION_VALUES.read_text())
    values = {
        **SERVER_PRODUCTION,
        "externalRedis": {"url": ""},
        "externalMongodb": {"url": ""},
        "existingSecret": {"name": "imgflow-connections-prod"},
    }
    args = template_args(values, files=[PRODUCTION_VALUES], directory=tmp_values)
    _install(kube, ns, "--dry-run=server", *args)
    out = _install(kube, ns, *args)
    assert "STATUS: deployed" in out and "WARNING" not in out
    assert "export IMGFLOW=https://imgflow.example.com" in out

    names = set(kube.kubectl("get", ",".join(NAMESPACED_KINDS), "-n", ns, "-o", "name").stdout.split())
    assert "deployment.apps/imgflow-redis" not in names and "deployment.apps/imgflow-mongodb" not in names
    assert "secret/imgflow-connections" not in names  # the chart made no Secret of its own
    ingress = _get(kube, ns, "ingress", API)
    assert ingress["spec"]["rules"][0]["host"] == prod["api"]["ingress"]["hosts"][0]["host"]
    assert _get(kube, ns, "deployment", API)["spec"]["replicas"] == 3
    assert _get(kube, ns, "pdb", API)["spec"]["maxUnavailable"] == 1
    dashboard = _get(kube, ns, "configmap", "imgflow-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    api_env = _get(kube, ns, "deployment", API)["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {
        "name": "IMGFLOW_REDIS_URL",
        "valueFrom": {"secretKeyRef": {"name": "imgflow-connections-prod", "key": "redis-url"}},
    } in api_env
    # the user's Secret is not the release's: uninstall leaves it alone
    _helm(kube, "uninstall", RELEASE, "--namespace", ns)
    left = _leftovers(kube, ns)
    assert left == ["secret/imgflow-connections-prod"]
    data = _get(kube, ns, "secret", "imgflow-connections-prod")["data"]
    assert base64.b64decode(data["redis-url"]).decode() == "redis://redis.example:6379/0"


def test_server_rejects_nothing_the_schema_lets_through(kube: Kube, namespace: str, tmp_values: Path) -> None:
    """Odd but valid values (no operator, fixed workers, local storage, platform UIDs) still pass
    the API server's validation."""
    values = {
        "operator": {"enabled": False},
        "worker": {
            "autoscaling": {"enabled": False},
            "replicas": 0,
            "podDisruptionBudget": {"maxUnavailable": "50%"},
        },
        "config": {"storageBackend": "local", "storageDir": "/srv/imgflow"},
        "storageVolume": {"persistentVolumeClaim": {"claimName": "imgflow-data"}},
        "podSecurity": {"runAsUser": None, "runAsGroup": None, "fsGroup": None},
        "api": {"service": {"type": "NodePort"}, "podDisruptionBudget": {"enabled": True}},
    }
    out = _install(kube, namespace, "--dry-run=server", *template_args(values, directory=tmp_values))
    assert "STATUS: pending-install" in out
    assert "ImageJobs are not processed" in out


# --- the operator's RBAC ------------------------------------------------------------------------


def _can_i(kube: Kube, ns: str, *args: str) -> bool:
    proc = kube.kubectl("auth", "can-i", *args, f"--as=system:serviceaccount:{ns}:{OPERATOR}", check=False)
    answer = proc.stdout.strip()
    assert answer in ("yes", "no"), proc.stderr
    return answer == "yes"


def test_operator_service_account_can_do_its_job_and_nothing_else(
    kube: Kube, namespace: str, uninstall_after: None
) -> None:
    ns = namespace
    _install(kube, ns)
    # A second namespace with its own Deployment named like ours, and a stranger Deployment here.
    other_ns = f"{ns}-other"[:63]
    kube.kubectl("create", "namespace", other_ns)
    try:
        kube.kubectl("create", "deployment", "other", "--image=nginx", "-n", ns)
        kube.kubectl("create", "deployment", WORKER, "--image=nginx", "-n", other_ns)

        # The authorizer learns of new bindings from a watch: wait until the first grant shows.
        deadline = time.monotonic() + 60
        while not _can_i(kube, ns, "patch", f"deployments.apps/{WORKER}", "--subresource=scale", "-n", ns):
            assert time.monotonic() < deadline, "the operator's RoleBinding never took effect"
            time.sleep(0.5)

        # Exactly what the operator sends: kopf reads by list+watch and writes by patch.
        must = [
            ("patch", f"deployments.apps/{WORKER}", "--subresource=scale", "-n", ns),
            ("list", "deployments.apps", "-n", ns),
            ("watch", "deployments.apps", "-n", ns),
            ("list", "imagejobs.imgflow.io", "-n", ns),
            ("watch", "imagejobs.imgflow.io", "-n", ns),
            ("patch", "imagejobs.imgflow.io", "-n", ns),
            ("delete", "imagejobs.imgflow.io", "-n", ns),
            ("patch", "imagejobs.imgflow.io", "--subresource=status", "-n", ns),
            ("create", "events", "-n", ns),
            ("list", "pods", "-n", ns),
            ("watch", "pods", "-n", ns),
            ("patch", "pods", "-n", ns),
        ]
        must_not = [
            # no Secrets, in any way
            ("get", "secrets", "-n", ns),
            ("list", "secrets", "-n", ns),
            ("watch", "secrets", "-n", ns),
            ("get", "secrets", "-n", other_ns),
            # no other Deployment's scale, and no Deployment writes at all
            ("patch", f"deployments.apps/{API}", "--subresource=scale", "-n", ns),
            ("update", f"deployments.apps/{API}", "--subresource=scale", "-n", ns),
            ("patch", "deployments.apps/other", "--subresource=scale", "-n", ns),
            ("patch", f"deployments.apps/{WORKER}", "--subresource=scale", "-n", other_ns),
            ("patch", f"deployments.apps/{WORKER}", "-n", ns),
            ("update", f"deployments.apps/{WORKER}", "-n", ns),
            ("delete", f"deployments.apps/{WORKER}", "-n", ns),
            ("create", "deployments.apps", "-n", ns),
            # no pods made or removed
            ("create", "pods", "-n", ns),
            ("delete", "pods", "-n", ns),
            ("create", "pods/exec", "-n", ns),
            # only its own namespace
            ("list", "imagejobs.imgflow.io", "-n", other_ns),
            ("list", "pods", "-n", other_ns),
            ("list", "deployments.apps", "--all-namespaces"),
            # nothing else of note
            ("create", "imagejobs.imgflow.io", "-n", ns),
            ("get", "configmaps", "-n", ns),
            ("create", "serviceaccounts/token", "-n", ns),
            ("patch", "roles.rbac.authorization.k8s.io", "-n", ns),
            ("create", "customresourcedefinitions.apiextensions.k8s.io"),
            # nothing cluster-scoped at all: kopf's scanning of CRDs and Namespaces is off
            ("get", "customresourcedefinitions.apiextensions.k8s.io/imagejobs.imgflow.io"),
            ("list", "customresourcedefinitions.apiextensions.k8s.io"),
            ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
            ("list", "namespaces"),
            ("watch", "namespaces"),
            ("get", f"namespaces/{ns}"),
            ("list", "imagejobs.imgflow.io", "--all-namespaces"),
            # verbs it never sends: no single-object reads, no updates, no Event patches
            ("get", "imagejobs.imgflow.io", "-n", ns),
            ("update", "imagejobs.imgflow.io", "-n", ns),
            ("get", "imagejobs.imgflow.io", "--subresource=status", "-n", ns),
            ("update", "imagejobs.imgflow.io", "--subresource=status", "-n", ns),
            ("get", f"deployments.apps/{WORKER}", "--subresource=scale", "-n", ns),
            ("update", f"deployments.apps/{WORKER}", "--subresource=scale", "-n", ns),
            ("get", f"deployments.apps/{WORKER}", "-n", ns),
            ("get", "pods", "-n", ns),
            ("patch", "events", "-n", ns),
            ("create", "events.events.k8s.io", "-n", ns),
        ]
        wrong = [" ".join(a) for a in must if not _can_i(kube, ns, *a)]
        wrong += ["NOT " + " ".join(a) for a in must_not if _can_i(kube, ns, *a)]
        assert wrong == [], "the operator's permissions differ from the agreed ones"

        # And no cluster-wide grant reaches it through any ClusterRoleBinding.
        bindings = kube.kubectl_json("get", "clusterrolebindings")["items"]
        to_operator = [
            b["metadata"]["name"]
            for b in bindings
            for s in b.get("subjects") or []
            if s.get("kind") == "ServiceAccount" and s.get("name") == OPERATOR and s.get("namespace") == ns
        ]
        assert to_operator == []
    finally:
        kube.kubectl("delete", "deployment", WORKER, "-n", other_ns, "--ignore-not-found", check=False)
        kube.kubectl("delete", "namespace", other_ns, "--wait=false", "--ignore-not-found", check=False)


# --- the real operator with the chart's permissions ---------------------------------------------


def _service_account_kubeconfig(kube: Kube, ns: str, path: Path) -> Path:
    """A kubeconfig that authenticates as the operator's ServiceAccount (a bound token)."""
    token = kube.kubectl("create", "token", OPERATOR, "-n", ns, "--duration=1h").stdout.strip()
    admin = yaml.safe_load(kube.kubeconfig.read_text())
    cluster = admin["clusters"][0]
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "operator", "user": {"token": token}}],
                "contexts": [
                    {"name": "operator", "context": {"cluster": cluster["name"], "user": "operator"}}
                ],
                "current-context": "operator",
            }
        )
    )
    return path


def _wait_for(what: str, check: Callable[[], bool], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen; operator log:\n{log.read_text()[-4000:]}")
        time.sleep(0.3)


def _replicas(kube: Kube, ns: str) -> int:
    replicas: int = _get(kube, ns, "deployment", WORKER)["spec"]["replicas"]
    return replicas


def test_the_real_operator_works_with_the_charts_permissions(
    kube: Kube, namespace: str, redis_url: str, mongodb_url: str, tmp_path: Path, uninstall_after: None
) -> None:
    """imgflow-operator, authenticated as the chart's ServiceAccount (nothing more), runs an
    ImageJob to its finalizer and scales the chart's worker Deployment by backlog, with no request
    refused. The pods it would scale never exist here (no controller-manager); the Deployment's
    spec.replicas is what the operator sets."""
    ns = namespace
    values = {"worker": {"autoscaling": {"minReplicas": 1, "maxReplicas": 6, "scaleDownWindowSeconds": 0}}}
    _install(kube, ns, *template_args(values, directory=tmp_path))
    kubeconfig = _service_account_kubeconfig(kube, ns, tmp_path / "operator.kubeconfig")
    # Without the RoleBinding in effect the operator would start with 403s: wait for it first.
    deadline = time.monotonic() + 60
    while not _can_i(kube, ns, "list", "imagejobs.imgflow.io", "-n", ns):
        assert time.monotonic() < deadline, "the operator's RoleBinding never took effect"
        time.sleep(0.5)

    tag = uuid.uuid4().hex[:10]
    stream, health = f"imgflow:chart:{tag}", _free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "POD_NAMESPACE": ns,  # as the chart's Downward API sets it
        "IMGFLOW_REDIS_URL": redis_url,
        "IMGFLOW_MONGODB_URL": mongodb_url,
        "IMGFLOW_MONGODB_DATABASE": f"imgflow_chart_{tag}",
        "IMGFLOW_STREAM": stream,
        "IMGFLOW_CONSUMER_GROUP": f"workers-{tag}",
        "IMGFLOW_OPERATOR_HEALTH_PORT": str(health),
        "IMGFLOW_OPERATOR_METRICS_PORT": str(_free_port()),
    }
    log = tmp_path / "operator.log"
    with log.open("w") as out:
        operator = subprocess.Popen(
            [sys.executable, "-m", "imgflow.operator", "--verbose"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    redis = Redis.from_url(redis_url)
    try:
        _wait_for("the operator's liveness endpoint", lambda: _healthy(health, operator), log)

        # An ImageJob: submitted (status written), then deleted (the finalizer removed).
        job = {
            "apiVersion": "imgflow.io/v1alpha1",
            "kind": "ImageJob",
            "metadata": {"name": "batch-1"},
            "spec": {"userId": "chart-test", "sources": [{"url": "https://example.com/cat.jpg"}]},
        }
        kube.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(job))
        _wait_for(
            "ImageJob status",
            lambda: bool(_get(kube, ns, "imagejob", "batch-1").get("status", {}).get("phase")),
            log,
        )

        # A backlog of 35 (the ImageJob's job and 34 more) calls for 4 workers at 10 per worker.
        for i in range(34):
            redis.xadd(stream, {"job_id": f"filler-{i}"})
        _wait_for("scale-up to 4 workers", lambda: _replicas(kube, ns) == 4, log)

        kube.kubectl("delete", "imagejob", "batch-1", "-n", ns, "--timeout=60s")
        redis.delete(stream)
        _wait_for("scale-down to the minimum", lambda: _replicas(kube, ns) == 1, log)
        assert operator.poll() is None, log.read_text()[-4000:]
    finally:
        operator.terminate()
        try:
            operator.wait(timeout=30)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()
        redis.delete(stream)
        redis.close()
    # kopf's APIForbiddenError and the kubernetes client's "(403) Reason: Forbidden" both say so
    text = log.read_text()
    refused = [line for line in text.splitlines() if "forbidden" in line.lower()]
    assert refused == [], "requests were refused:\n" + "\n".join(refused[:10])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _healthy(port: int, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise AssertionError(f"the operator exited with {process.returncode}")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False
