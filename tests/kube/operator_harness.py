"""Running imgflow-operator against a real kube-apiserver, under its own least-privilege RBAC.

* ``operator_kubeconfig``: applies the chart's operator ServiceAccount, Role and RoleBinding
  (``helm template`` of release ``imgflow``) to a namespace and writes a kubeconfig holding a token
  of the ``imgflow-operator`` ServiceAccount, so the operator gets exactly the permissions the
  chart grants it and not the tests' admin rights;
* ``start_operator``: the ``imgflow-operator`` console script as a child process;
* ``WorkerFleet``: the kubelet and ReplicaSet controller this control plane lacks, for one worker
  Deployment: it keeps as many real worker processes (and Pod objects named after them) as the
  Deployment's ``spec.replicas`` says, and on scale-down stops the pod a ReplicaSet would delete
  first (lowest ``pod-deletion-cost``, then newest) with SIGTERM.

Also used by ``bench/operator_reaction.py``.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from scripts.servers import Server, free_port, settings_env, wait_for_port
from tests.helm_chart import CHART, KUBE_VERSION, helm

# Release "imgflow" contains the chart's name, so the chart names its objects imgflow-<component>.
RELEASE = "imgflow"
RBAC_TEMPLATES = ("operator-serviceaccount.yaml", "operator-rbac.yaml", "operator-rolebindings.yaml")
SERVICE_ACCOUNT = "imgflow-operator"
WORKER_DEPLOYMENT = "imgflow-worker"  # the one Deployment the chart's Role lets it scale
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"

Kubectl = Callable[..., Any]  # tests.kube.conftest.Kube.kubectl


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


@dataclass
class FleetPod:
    name: str
    server: Server
    started: float


@dataclass
class WorkerFleet:
    """Keeps real worker processes in line with a Deployment's ``spec.replicas`` (see module doc)."""

    api: kubernetes.client.ApiClient
    namespace: str
    deployment: str
    start_worker: Callable[[str], Server]  # pod name -> a started worker process (POD_NAME set)
    poll_s: float = 0.2
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (monotonic time, spec.replicas)
    costs_seen: dict[str, set[int]] = field(default_factory=dict)
    errors: list[BaseException] = field(default_factory=list)
    _pods: list[FleetPod] = field(default_factory=list)
    _counter: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _stoppers: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(4))

    def __post_init__(self) -> None:
        self._apps = kubernetes.client.AppsV1Api(self.api)
        self._core = kubernetes.client.CoreV1Api(self.api)
        deployment = self._raw(self._apps.read_namespaced_deployment(self.deployment, self.namespace))
        self._labels: dict[str, str] = deployment["spec"]["selector"]["matchLabels"]

    def __enter__(self) -> WorkerFleet:
        self._thread = threading.Thread(target=self._run, name="worker-fleet", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
        for pod in list(self._pods):
            self._stoppers.submit(self._stop_pod, pod)
        self._stoppers.shutdown(wait=True)

    @property
    def replicas(self) -> int:
        return self.timeline[-1][1] if self.timeline else -1

    @property
    def running(self) -> int:
        return len(self._pods)

    def wait_for(self, predicate: Callable[[int], bool], within: float, what: str) -> None:
        """Until ``predicate(spec.replicas)`` holds and the fleet matches it.

        ``within`` only stops a hung test; it is no target."""
        deadline = time.monotonic() + within
        while not (self.timeline and predicate(self.replicas) and self.running == self.replicas):
            if self.errors:
                raise self.errors[0]
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{what}: replicas {self.replicas}, running {self.running} after {within}s"
                )
            time.sleep(0.05)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._reconcile()
            except Exception as exc:  # reported by wait_for
                self.errors.append(exc)
            self._stop.wait(self.poll_s)

    def _reconcile(self) -> None:
        scale = self._raw(self._apps.read_namespaced_deployment_scale(self.deployment, self.namespace))
        want = int(scale["spec"].get("replicas", 0))
        if not self.timeline or self.timeline[-1][1] != want:
            self.timeline.append((time.monotonic(), want))
        costs = self._costs()
        for name, cost in costs.items():
            self.costs_seen.setdefault(name, set()).add(cost)
        while len(self._pods) < want:
            self._counter += 1
            name = f"{self.deployment}-{self._counter}"
            pod = kubernetes.client.V1Pod.from_dict(
                {
                    "metadata": {"name": name, "labels": self._labels},
                    "spec": {"containers": [{"name": "w", "image": "x"}]},
                }
            )
            assert pod is not None
            self._core.create_namespaced_pod(self.namespace, pod)
            self._pods.append(FleetPod(name, self.start_worker(name), time.monotonic()))
        while len(self._pods) > want:
            # What a ReplicaSet deletes first among equally (un)ready pods: lowest cost, then newest.
            victim = min(self._pods, key=lambda p: (costs.get(p.name, 0), -p.started))
            self._pods.remove(victim)
            self._stoppers.submit(self._stop_pod, victim)

    def _costs(self) -> dict[str, int]:
        pods = self._core.list_namespaced_pod(
            self.namespace, label_selector=",".join(f"{k}={v}" for k, v in self._labels.items())
        )
        return {
            p["metadata"]["name"]: int(p["metadata"].get("annotations", {}).get(DELETION_COST, "0"))
            for p in self._raw(pods)["items"]
        }

    def _raw(self, obj: object) -> dict[str, Any]:
        """A client model as the API's own JSON (camelCase keys, no Nones)."""
        raw: dict[str, Any] = self.api.sanitize_for_serialization(obj)  # type: ignore[no-untyped-call]
        return raw

    def _stop_pod(self, pod: FleetPod) -> None:
        pod.server.terminate()  # SIGTERM: the worker drains like a pod being deleted
        try:
            self._core.delete_namespaced_pod(pod.name, self.namespace, grace_period_seconds=0)
        except kubernetes.client.exceptions.ApiException as exc:
            if exc.status != 404:
                raise


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
