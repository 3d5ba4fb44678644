"""Running imgflow-operator against a real kube-apiserver, under its own least-privilege RBAC.

* ``operator_kubeconfig``: applies the chart's operator ServiceAccount, Role and RoleBinding
  (``helm template`` of release ``imgflow``) to a namespace and writes a kubeconfig holding a token
  of the ``imgflow-operator`` ServiceAccount, so the operator gets exactly the permissions the
  chart grants it and not the tests' admin rights;
* ``start_operator``: the ``imgflow-operator`` console script as a child process;
(Autoscaling with real pods, a ReplicaSet controller and a kubelet is tested on the node:
tests/node/test_chart_on_node.py.)

Also used by ``bench/studies/operator_reaction.py``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from imgflow.harness.helm_chart import CHART, KUBE_VERSION, helm
from imgflow.harness.servers import Server, free_port, settings_env, wait_for_port

# Release "imgflow" contains the chart's name, so the chart names its objects imgflow-<component>.
RELEASE = "imgflow"
RBAC_TEMPLATES = ("operator-serviceaccount.yaml", "operator-rbac.yaml", "operator-rolebindings.yaml")
SERVICE_ACCOUNT = "imgflow-operator"
WORKER_DEPLOYMENT = "imgflow-worker"  # the one Deployment the chart's Role lets it scale
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"

Kubectl = Callable[..., Any]  # imgflow.harness.kube.Kube.kubectl


def rbac_for(namespace: str) -> str:
    """The chart's ServiceAccount, Role and RoleBinding of the operator, rendered for ``namespace``
    with default values: what ``helm install imgflow`` would grant it there, and nothing else."""
    show_only = [arg for t in RBAC_TEMPLATES for arg in ("--show-only", f"templates/{t}")]
    out = helm(
        "template", RELEASE, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION, *show_only
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(out) if doc]
    found = sorted((doc["kind"], doc["metadata"]["name"]) for doc in docs)
    expected = [
        ("Role", SERVICE_ACCOUNT),
        ("RoleBinding", SERVICE_ACCOUNT),
        ("ServiceAccount", SERVICE_ACCOUNT),
    ]
    if found != expected:
        raise RuntimeError(f"the chart's operator RBAC templates render {found}, not {expected}")
    (role,) = (doc for doc in docs if doc["kind"] == "Role")
    scalable = [
        name
        for rule in role["rules"]
        if "deployments/scale" in rule["resources"]
        for name in rule["resourceNames"]
    ]
    if scalable != [WORKER_DEPLOYMENT]:
        raise RuntimeError(
            f"the chart's Role lets the operator scale {scalable}, not [{WORKER_DEPLOYMENT!r}]"
        )
    return out


def operator_kubeconfig(kubectl: Kubectl, admin_kubeconfig: Path, namespace: str, dest: Path) -> Path:
    """Grant the operator's RBAC in ``namespace`` and write a kubeconfig that acts as its account."""
    kubectl("apply", "-f", "-", input=rbac_for(namespace))
    token = kubectl("create", "token", SERVICE_ACCOUNT, "-n", namespace, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [
            {"name": "c", "context": {"cluster": "c", "user": SERVICE_ACCOUNT, "namespace": namespace}}
        ],
        "current-context": "c",
    }
    dest.write_text(yaml.safe_dump(config))
    # The authorizer learns new bindings from a watch: wait until it knows this one.
    who = f"--as=system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}"
    deadline = time.monotonic() + 30
    while kubectl(
        "auth", "can-i", "watch", "imagejobs.imgflow.io", "-n", namespace, who, check=False
    ).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError("the operator's RoleBinding never took effect")
        time.sleep(0.1)
    return dest


@dataclass
class OperatorProcess:
    server: Server
    metrics_url: str
    health_url: str

    def log(self) -> str:
        return self.server.log.read_text(errors="replace") if self.server.log.exists() else ""


def start_operator(settings: Any, kubeconfig: Path, log: Path, **extra_env: str) -> OperatorProcess:
    """``imgflow-operator`` for ``settings`` (an OperatorSettings naming the namespace); waits until
    its liveness endpoint answers."""
    health, metrics = free_port(), free_port()
    env = {
        **settings_env(settings),
        "KUBECONFIG": str(kubeconfig),
        "IMGFLOW_OPERATOR_HEALTH_PORT": str(health),
        "IMGFLOW_OPERATOR_METRICS_PORT": str(metrics),
        **extra_env,
    }
    argv = [sys.executable, "-m", "imgflow.operator"]
    server = Server("operator", argv, log, env).start()
    try:
        wait_for_port(health, process=server.process)
    except (RuntimeError, TimeoutError) as exc:
        server.kill()
        raise RuntimeError(f"operator did not start:\n{server.tail()}") from exc
    return OperatorProcess(
        server, f"http://127.0.0.1:{metrics}/metrics", f"http://127.0.0.1:{health}/healthz"
    )


def api_client(kubeconfig: Path) -> kubernetes.client.ApiClient:
    client: kubernetes.client.ApiClient = kubernetes.config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    return client


def worker_deployment(
    annotations: dict[str, str], replicas: int, *, name: str = WORKER_DEPLOYMENT
) -> dict[str, Any]:
    """A worker Deployment object as the chart makes one, autoscaled; no pod of it ever runs here."""
    labels = {"app.kubernetes.io/name": "imgflow", "app.kubernetes.io/component": "worker"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "labels": {**labels, "imgflow.io/autoscale": "true"},
            "annotations": annotations,
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "worker", "image": "imgflow-worker:test"}]},
            },
        },
    }


def metric(text: str, name: str, **labels: str) -> float | None:
    """One sample's value from a Prometheus text exposition, or None."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        metric_name, _, rest = key.partition("{")
        got = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if metric_name == name and got == want:
            return float(value)
    return None


def events_for(kubectl: Kubectl, namespace: str, kind: str, name: str) -> list[dict[str, Any]]:
    selector = f"involvedObject.kind={kind},involvedObject.name={name}"
    out = kubectl("get", "events", "-n", namespace, "--field-selector", selector, "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items
