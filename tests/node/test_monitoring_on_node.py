"""A real Prometheus on the node watches a release as a Prometheus Operator would from the chart's
ServiceMonitor and PrometheusRule, both rendered with the release's values.

Prometheus (.tools/bin/prometheus, with Kubernetes service discovery) runs in the node's network
namespace, as kubelet and kube-proxy do, and discovers the API, worker and operator pods through the
Kubernetes API with a service account allowed only to list and watch them in the release's
namespace. Each ServiceMonitor endpoint becomes a scrape job as the Prometheus Operator generates
it (the Services the selector picks, the endpoint's port name, ``job`` the Service's name and
``namespace``), so the rules' selectors are the chart's own. What the test changes, for time: the
scrape and evaluation interval (2 s instead of the ServiceMonitor's 30 s) and the ``for:`` of
ImgflowBacklogGrowing (20 s instead of 15 minutes); nothing else of the rules.

With the workers taken out of the operator's hands (at 0 replicas), jobs submitted with a tenant
key wait: the backlog grows and ImgflowBacklogGrowing goes pending, then firing. Then the operator
gets the workers back, the jobs complete, and every query of the Grafana dashboard (parsed by
promtool) has returned series from this Prometheus.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from imgflow.harness import images
from imgflow.harness.helm_chart import CHART, KUBE_VERSION, helm
from imgflow.harness.paths import TOOLS
from tests.node.conftest import Node, make_deploy, pod_json, port_forward, wait_until
from tests.node.test_chart_on_node import NS, RELEASE, admin_key
from tests.test_alerts import dashboard_queries, promtool

ALERT = "ImgflowBacklogGrowing"
FOR = "20s"
INTERVAL = "2s"
PORT = 9090
# Run alone, the test starts the node too.
pytestmark = pytest.mark.timeout(600)
WORKERS = f"{RELEASE}-worker"
AUTOSCALE_LABEL = "imgflow.io/autoscale"
JOBS = 6

# Read-only, in the release's namespace: what Prometheus's endpointslice discovery watches.
READER = """
apiVersion: v1
kind: ServiceAccount
metadata: {name: prometheus}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: prometheus-discovery}
rules:
  - apiGroups: [""]
    resources: [services, pods]
    verbs: [list, watch]
  - apiGroups: [discovery.k8s.io]
    resources: [endpointslices]
    verbs: [list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: prometheus-discovery}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: prometheus-discovery}
subjects: [{kind: ServiceAccount, name: prometheus}]
"""


@pytest.fixture(scope="module")
def released(node: Node) -> Iterator[None]:
    make_deploy(node, NS, RELEASE)
    yield
    helm("uninstall", RELEASE, "-n", NS, "--ignore-not-found", kubeconfig=node.kube.kubeconfig)


def rendered(node: Node, directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The release's ServiceMonitor and PrometheusRule, as the chart renders them with its values."""
    values = directory / "release-values.yaml"
    values.write_text(
        helm("get", "values", RELEASE, "-n", NS, "-o", "yaml", kubeconfig=node.kube.kubeconfig).stdout
    )
    out = helm(
        "template", RELEASE, str(CHART), "-n", NS, "--kube-version", KUBE_VERSION, "-f", str(values),
        "--set", "serviceMonitor.enabled=true", "--set", "prometheusRule.enabled=true",
        "--show-only", "templates/servicemonitor.yaml", "--show-only", "templates/prometheusrule.yaml",
    ).stdout  # fmt: skip
    docs = {d["kind"]: d for d in yaml.safe_load_all(out) if d}
    return docs["ServiceMonitor"], docs["PrometheusRule"]


def meta_label(name: str) -> str:
    return "__meta_kubernetes_service_label_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


def scrape_configs(monitor: dict[str, Any], kubeconfig: Path) -> list[dict[str, Any]]:
    """One scrape job per endpoint of the ServiceMonitor, as the Prometheus Operator generates it."""
    spec = monitor["spec"]
    selector = spec["selector"]
    keep = [
        {"source_labels": [meta_label(k)], "regex": v, "action": "keep"}
        for k, v in selector.get("matchLabels", {}).items()
    ]
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        keep.append(
            {
                "source_labels": [meta_label(expression["key"])],
                "regex": "|".join(expression["values"]),
                "action": "keep",
            }
        )
    name = f"serviceMonitor/{monitor['metadata']['namespace']}/{monitor['metadata']['name']}"
    port_name = "__meta_kubernetes_endpointslice_port_name"
    return [
        {
            "job_name": f"{name}/{i}",
            "scrape_interval": INTERVAL,
            "metrics_path": endpoint["path"],
            "kubernetes_sd_configs": [
                {
                    "role": "endpointslice",
                    "kubeconfig_file": str(kubeconfig),
                    "namespaces": {"names": spec["namespaceSelector"]["matchNames"]},
                }
            ],
            "relabel_configs": [
                *keep,
                {"source_labels": [port_name], "regex": endpoint["port"], "action": "keep"},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
            ],
        }
        for i, endpoint in enumerate(spec["endpoints"])
    ]


def shortened(rule: dict[str, Any]) -> dict[str, Any]:
    """The rule group with only ALERT's ``for:`` made FOR."""
    groups = rule["spec"]["groups"]
    [alert] = [r for g in groups for r in g["rules"] if r.get("alert") == ALERT]
    alert["for"] = FOR
    return {"groups": groups}


def reader_kubeconfig(node: Node, path: Path) -> Path:
    """A kubeconfig of the ``prometheus`` service account: list and watch in NS, nothing more."""
    node.kube.kubectl("apply", "-n", NS, "-f", "-", input=READER)
    token = node.kube.kubectl("create", "token", "prometheus", "-n", NS, "--duration=1h").stdout.strip()
    assert node.kube.cluster_dir is not None
    ca = node.kube.cluster_dir / "pki" / "ca.crt"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "node", "cluster": {"server": node.kube.server, "certificate-authority": str(ca)}}
        ],
        "users": [{"name": "prometheus", "user": {"token": token}}],
        "contexts": [{"name": "prometheus", "context": {"cluster": "node", "user": "prometheus"}}],
        "current-context": "prometheus",
    }
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class Prometheus:
    url: str

    def get(self, path: str, **params: str) -> Any:
        reply = httpx.get(self.url + path, params=params, timeout=10)
        reply.raise_for_status()
        return reply.json()["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/api/v1/query", query=expr)["result"]
        return result

    def alert_states(self, name: str) -> list[str]:
        return [a["state"] for a in self.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == name]


@pytest.fixture(scope="module")
def prometheus(node: Node, released: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    directory = tmp_path_factory.mktemp("prometheus")
    monitor, rule = rendered(node, directory)
    (directory / "alerts.yaml").write_text(yaml.safe_dump(shortened(rule)))
    config = {
        "global": {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL},
        "rule_files": ["alerts.yaml"],
        "scrape_configs": scrape_configs(monitor, reader_kubeconfig(node, directory / "kubeconfig")),
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    node_ip = next(
        a["address"]
        for a in node.kube.kubectl_json("get", "node", "imgflow-node")["status"]["addresses"]
        if a["type"] == "InternalIP"
    )
    with (directory / "prometheus.log").open("w") as log:
        # nsenter execs Prometheus: terminating this process stops it
        process = subprocess.Popen(
            [
                "nsenter", f"--target={node.holder}", "--net", "--", str(TOOLS / "prometheus"),
                f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={node_ip}:{PORT}",
            ],
            cwd=directory, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    prom = Prometheus(f"http://{node_ip}:{PORT}")
    try:

        def ready() -> bool:
            assert process.poll() is None, (directory / "prometheus.log").read_text()[-3000:]
            try:
                return httpx.get(prom.url + "/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until("Prometheus on the node ready", ready, within=60)
        yield prom
    finally:
        process.terminate()
        process.wait(30)
        # helm uninstall leaves what the release did not make
        node.kube.kubectl("delete", "-n", NS, "--ignore-not-found", "-f", "-", input=READER)


def test_a_waiting_backlog_fires_the_alert_and_every_dashboard_query_has_series(
    node: Node, prometheus: Prometheus, tmp_path: Path
) -> None:
    kubectl = node.kube.kubectl
    # The operator leaves the workers alone, and none runs: submitted jobs wait.
    kubectl("label", "deployment", WORKERS, "-n", NS, f"{AUTOSCALE_LABEL}=false", "--overwrite")
    try:
        kubectl("scale", "deployment", WORKERS, "-n", NS, "--replicas=0")
        wait_until("no worker pod", lambda: not pod_json(node.kube, NS, "app.kubernetes.io/component=worker"))

        def scraped() -> bool:
            jobs = {s["metric"]["job"] for s in prometheus.query(f'up{{namespace="{NS}"}} == 1')}
            return jobs >= {f"{RELEASE}-api", f"{RELEASE}-operator-metrics"}

        wait_until("Prometheus scraped the API and the operator pods", scraped, within=120)
        # a few samples of the empty backlog, from which it then grows
        wait_until(
            "the operator's backlog scraped at 0",
            lambda: prometheus.query(f'count_over_time(imgflow_queue_backlog{{namespace="{NS}"}}[1m]) >= 3'),
        )
        assert prometheus.alert_states(ALERT) == []

        seen: set[str] = set()
        states: list[str] = []
        with port_forward(node.kube, NS, f"svc/{RELEASE}-api", 80) as api:
            key = tenant_key(api.url, admin_key(node))
            with httpx.Client(
                base_url=api.url, timeout=30, headers={"Authorization": f"Bearer {key}"}
            ) as client:
                # the first will fail, for the dashboard's failure panels
                job_ids = []
                for source in [images.truncated_jpeg(), *(images.jpeg(640, 480) for _ in range(JOBS - 1))]:
                    created = client.post(
                        "/api/image-processing/jobs",
                        files={"file": ("photo.jpg", source, "image/jpeg")},
                        data={"userId": "monitoring"},
                    )
                    assert created.status_code == 202, created.text
                    job_ids.append(created.json()["jobId"])
                    time.sleep(1)

                def firing() -> bool:
                    for state in prometheus.alert_states(ALERT):
                        if states[-1:] != [state]:
                            states.append(state)
                    return states[-1:] == ["firing"]

                wait_until(f"{ALERT} firing", firing, within=180, every=1)
                assert states[0] == "pending", states
                [alert] = [
                    a for a in prometheus.get("/api/v1/alerts")["alerts"] if a["labels"]["alertname"] == ALERT
                ]
                assert alert["labels"]["namespace"] == NS and float(alert["value"]) >= 1, alert
                seen |= with_series(prometheus)

                # The operator gets the workers back: they start and finish the jobs.
                kubectl("label", "deployment", WORKERS, "-n", NS, f"{AUTOSCALE_LABEL}=true", "--overwrite")

                def finished() -> bool:
                    statuses = [
                        client.get(f"/api/image-processing/jobs/{j}").json()["status"] for j in job_ids
                    ]
                    assert "failed" not in statuses[1:], statuses
                    return statuses == ["failed"] + ["completed"] * (JOBS - 1)

                wait_until("the waiting jobs finished", finished, within=240, every=2)
        # the workers' series, with the jobs done
        wait_until(
            "the workers' completions scraped",
            lambda: prometheus.query(f'sum(imgflow_jobs_completed_total{{namespace="{NS}"}}) >= {JOBS}'),
        )
        queries = dashboard_queries()

        def none_missing() -> bool:
            seen.update(with_series(prometheus))
            return seen >= set(queries)

        try:
            wait_until("series for every dashboard query", none_missing, within=60, every=2)
        except AssertionError:
            pytest.fail(f"no series from Prometheus for the dashboard's {sorted(set(queries) - seen)}")
    finally:
        kubectl("label", "deployment", WORKERS, "-n", NS, f"{AUTOSCALE_LABEL}=true", "--overwrite")
    # promtool parses each of those queries
    recording = [{"record": f"imgflow:dashboard:{i}", "expr": q} for i, q in enumerate(queries)]
    (tmp_path / "dashboard.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recording}]})
    )
    checked = promtool("check", "rules", str(tmp_path / "dashboard.yaml"))
    assert checked.returncode == 0 and f"SUCCESS: {len(queries)} rules found" in checked.stdout, (
        checked.stdout
    )


def tenant_key(url: str, admin: str) -> str:
    made = httpx.post(
        url + "/api/admin/keys",
        json={"tenant": "monitoring", "scopes": ["jobs:write", "jobs:read"], "name": "monitoring test"},
        headers={"Authorization": f"Bearer {admin}"},
        timeout=30,
    )
    assert made.status_code == 201, made.text
    key: str = made.json()["key"]
    return key


def with_series(prometheus: Prometheus) -> set[str]:
    """The dashboard's queries that return at least one series now."""
    return {q for q in dashboard_queries() if prometheus.query(q)}
