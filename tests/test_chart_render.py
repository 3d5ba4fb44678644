"""The Helm chart (deploy/helm/imgflow) without an API server: lint, render, schema, security.

Also checks that the files around the chart agree with it: the Dockerfiles' UID and commands,
skaffold.yaml's value keys, the GitHub workflow. tests/kube/test_chart.py installs the chart into a
real kube-apiserver.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from imgflow.core.readiness import CHECK_TIMEOUT_S
from imgflow.core.settings import Settings
from imgflow.harness.helm_chart import (
    CHART,
    KUBE_VERSION,
    PRODUCTION_VALUES,
    find,
    helm,
    one,
    pod_specs,
    render,
    restricted_violations,
    template_args,
)
from imgflow.harness.paths import ROOT
from imgflow.operator.settings import OperatorSettings
from tests.conftest import Processes, make_settings

pytestmark = pytest.mark.skipif(
    not (ROOT / ".tools" / "bin" / "helm").exists(), reason="needs .tools/bin/helm (scripts/tools.sh helm)"
)

REL = "rel"
NS = "imgflow"
API, WORKER, OPERATOR = f"{REL}-imgflow-api", f"{REL}-imgflow-worker", f"{REL}-imgflow-operator"
REDIS, MONGODB = f"{REL}-imgflow-redis", f"{REL}-imgflow-mongodb"
SEAWEEDFS = f"{REL}-imgflow-seaweedfs"
DEFAULT_VALUES: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
MEMBERS = ("api", "worker", "operator")
# What a chart might create outside its namespace (the CRD is in crds/, which helm template omits).
CLUSTER_SCOPED_KINDS = ("ClusterRole", "ClusterRoleBinding", "Namespace", "CustomResourceDefinition")


def pod_settings(env: dict[str, str]) -> Settings:
    """What a pod with these IMGFLOW_* variables reads (pydantic-settings' own parsing: JSON for
    structures such as presets)."""
    with mock.patch.dict(os.environ, env, clear=True):
        return Settings()


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return render(release=REL, namespace=NS)


@pytest.fixture(scope="module")
def production_docs() -> list[dict[str, Any]]:
    return render(files=[PRODUCTION_VALUES], release=REL, namespace=NS)


def container(deployment: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    return containers[0] if name is None else next(c for c in containers if c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env") or []}


def secret_data(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def config_map(docs: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap", f"{REL}-imgflow-config")["data"]
    return data


# --- lint ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, PRODUCTION_VALUES], ids=["default", "production"])
def test_lint_strict_has_no_warnings(values: Path | None) -> None:
    args = ["-f", str(values)] if values else []
    proc = helm("lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART), *args, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output
    assert "1 chart(s) linted, 0 chart(s) failed" in output


# --- what the default values render -------------------------------------------------------------


def test_default_render_has_the_expected_objects(default_docs: list[dict[str, Any]]) -> None:
    kinds = sorted((d["kind"], d["metadata"]["name"]) for d in default_docs)
    assert kinds == sorted(
        [
            ("ConfigMap", f"{REL}-imgflow-config"),
            ("Secret", f"{REL}-imgflow-connections"),
            ("Deployment", API),
            ("Service", API),
            ("Deployment", WORKER),
            ("Service", f"{REL}-imgflow-worker-metrics"),
            ("PodDisruptionBudget", WORKER),
            ("Deployment", OPERATOR),
            ("Service", f"{REL}-imgflow-operator-metrics"),
            ("ServiceAccount", OPERATOR),
            ("Role", OPERATOR),
            ("RoleBinding", OPERATOR),
            ("Deployment", REDIS),
            ("Service", REDIS),
            ("Deployment", MONGODB),
            ("Service", MONGODB),
            ("Deployment", SEAWEEDFS),
            ("Service", SEAWEEDFS),
            ("Pod", f"{REL}-imgflow-test"),
        ]
    )
    for d in default_docs:
        labels = d["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "imgflow"
        assert labels["app.kubernetes.io/instance"] == REL
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/version"] == "0.1.0"
        assert "app.kubernetes.io/component" in labels
        assert d["metadata"]["namespace"] == NS


def test_dev_databases_are_wired_by_default(default_docs: list[dict[str, Any]]) -> None:
    urls = secret_data(one(default_docs, "Secret", f"{REL}-imgflow-connections"))
    admin_key = urls.pop("admin-key")
    assert re.fullmatch(r"[A-Za-z0-9]{64}", urls.pop("url-signing-key"))  # IMGFLOW_URL_SIGNING_KEY
    urls.pop("s3-access-key-id"), urls.pop("s3-secret-access-key")  # the dev SeaweedFS's
    assert urls == {"redis-url": f"redis://{REDIS}:6379/0", "mongodb-url": f"mongodb://{MONGODB}:27017"}
    # a generated bootstrap admin key that the API accepts (IMGFLOW_ADMIN_KEY)
    assert re.fullmatch(r"imgf_admin_[A-Za-z0-9]{43}", admin_key)
    Settings(admin_key=admin_key)
    redis = container(one(default_docs, "Deployment", REDIS))
    assert redis["image"] == "redis:7.4"
    mongo = container(one(default_docs, "Deployment", MONGODB))
    assert mongo["image"] == "mongo:8.0" and mongo["command"] == ["mongod"]
    for name in (REDIS, MONGODB, SEAWEEDFS):
        assert one(default_docs, "Deployment", name)["spec"]["strategy"]["type"] == "Recreate"


def test_dev_seaweedfs_is_the_default_storage_with_credentials_from_the_chart_secret(
    default_docs: list[dict[str, Any]],
) -> None:
    secret = f"{REL}-imgflow-connections"
    stored = secret_data(one(default_docs, "Secret", secret))
    # a pair generated on install (kept on upgrade by lookup, as the admin key is)
    assert re.fullmatch(r"IMGFLOW[A-Z0-9]{13}", stored["s3-access-key-id"])
    assert re.fullmatch(r"[A-Za-z0-9]{40}", stored["s3-secret-access-key"])
    again = secret_data(one(render(release=REL, namespace=NS), "Secret", secret))
    assert again["s3-access-key-id"] != stored["s3-access-key-id"]  # helm template: no lookup

    parsed = pod_settings(config_map(default_docs))
    assert (parsed.storage_backend, parsed.s3_endpoint) == ("s3", f"http://{SEAWEEDFS}:8333")
    assert parsed.s3_presign is False  # clients outside the cluster cannot reach the dev server
    refs = {
        "IMGFLOW_S3_ACCESS_KEY_ID": {"name": secret, "key": "s3-access-key-id", "optional": False},
        "IMGFLOW_S3_SECRET_ACCESS_KEY": {"name": secret, "key": "s3-secret-access-key", "optional": False},
    }
    for name in (API, WORKER, OPERATOR):
        env = env_of(container(one(default_docs, "Deployment", name)))
        assert {k: env[k]["secretKeyRef"] for k in refs} == refs, name

    deployment = one(default_docs, "Deployment", SEAWEEDFS)
    assert deployment["spec"]["replicas"] == 1
    weed = container(deployment)
    assert weed["image"] == "chrislusf/seaweedfs:4.53" and weed["command"] == ["weed"]
    args = weed["args"]
    assert args[args.index("server") + 1 :][:1] == ["-dir=/data"]
    # only the S3 gateway listens beyond the pod; nothing reports home
    assert {"-ip.bind=127.0.0.1", "-s3", "-s3.ip.bind=0.0.0.0", "-s3.port=8333"} <= set(args)
    assert "-master.telemetry=false" in args
    assert "-master.telemetry.url=http://127.0.0.1:9/" in args
    assert {"-s3.port.iceberg=0", "-s3.port.lance=0"} <= set(args)
    env = env_of(weed)
    assert env["AWS_ACCESS_KEY_ID"]["secretKeyRef"] == {"name": secret, "key": "s3-access-key-id"}
    assert env["AWS_SECRET_ACCESS_KEY"]["secretKeyRef"] == {"name": secret, "key": "s3-secret-access-key"}
    assert env["GOMEMLIMIT"] == {"resourceFieldRef": {"resource": "limits.memory"}}
    # Ready once the master has a leader and a volume server, not when the gateway first answers
    probe = weed["readinessProbe"]["exec"]["command"]
    assert probe[:2] == ["sh", "-c"] and "http://127.0.0.1:9333/dir/status" in probe[2], probe
    assert weed["resources"] == DEFAULT_VALUES["seaweedfs"]["resources"]
    mounts = {m["mountPath"]: m["name"] for m in weed["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mounts["/data"]]["emptyDir"] == {} and "emptyDir" in volumes[mounts["/tmp"]]
    service = one(default_docs, "Service", SEAWEEDFS)
    assert service["spec"]["ports"] == [{"name": "s3", "port": 8333, "targetPort": "s3", "protocol": "TCP"}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize(
    "values",
    [
        {"config": {"storageBackend": "gridfs"}},
        {
            "config": {"s3Endpoint": "http://minio.storage:9000"},
            "s3Credentials": {"accessKeyId": "AK", "secretAccessKey": "SK"},
        },
        {"seaweedfs": {"enabled": False}},  # AWS S3
        {"config": {"storageBackend": "local"}, "storageVolume": {"emptyDir": {}}},
    ],
    ids=["gridfs", "external-s3", "aws-s3", "local"],
)
def test_other_storage_deploys_no_seaweedfs(values: dict[str, Any]) -> None:
    docs = render(values)
    assert not find(docs, "Deployment", SEAWEEDFS) and not find(docs, "Service", SEAWEEDFS)
    stored = secret_data(one(docs, "Secret", f"{REL}-imgflow-connections"))
    given = values.get("s3Credentials", {})
    assert stored.get("s3-access-key-id") == given.get("accessKeyId")  # nothing generated
    data = config_map(docs)
    assert data["IMGFLOW_S3_ENDPOINT"] == values.get("config", {}).get("s3Endpoint", "")
    env = env_of(container(one(docs, "Deployment", WORKER)))
    if pod_settings(data).storage_backend == "s3":
        assert env["IMGFLOW_S3_ACCESS_KEY_ID"]["secretKeyRef"]["optional"] is True
    else:
        assert "IMGFLOW_S3_ACCESS_KEY_ID" not in env


def test_dev_seaweedfs_reads_its_credentials_from_the_users_secret() -> None:
    """With a Secret of one's own the dev SeaweedFS takes its identity from there, as the pods do."""
    docs = render({"existingSecret": {"name": "imgflow-prod"}})
    assert not find(docs, "Secret")
    weed = env_of(container(one(docs, "Deployment", SEAWEEDFS)))
    api = env_of(container(one(docs, "Deployment", API)))
    for server, client in (
        ("AWS_ACCESS_KEY_ID", "IMGFLOW_S3_ACCESS_KEY_ID"),
        ("AWS_SECRET_ACCESS_KEY", "IMGFLOW_S3_SECRET_ACCESS_KEY"),
    ):
        assert weed[server]["secretKeyRef"]["name"] == "imgflow-prod"
        assert api[client]["secretKeyRef"] == {**weed[server]["secretKeyRef"], "optional": False}
    docs = render({"s3Credentials": {"existingSecret": "s3", "accessKeyIdKey": "id"}})
    assert "s3-access-key-id" not in secret_data(one(docs, "Secret", f"{REL}-imgflow-connections"))
    weed = env_of(container(one(docs, "Deployment", SEAWEEDFS)))
    assert weed["AWS_ACCESS_KEY_ID"]["secretKeyRef"] == {"name": "s3", "key": "id"}


def test_configmap_sets_every_core_setting_with_the_application_defaults(
    default_docs: list[dict[str, Any]],
) -> None:
    data = config_map(default_docs)
    fields = Settings.model_fields
    secret_fields = {
        "redis_url",
        "mongodb_url",
        "admin_key",
        "webhook_secret",
        "url_signing_key",
        "url_signing_previous_key",
        "s3_access_key_id",
        "s3_secret_access_key",
    }
    keys = {k.removeprefix("IMGFLOW_").lower() for k in data}
    assert all(k.startswith("IMGFLOW_") for k in data)
    assert keys <= set(fields), f"ConfigMap keys that are no setting: {keys - set(fields)}"
    assert set(fields) - secret_fields <= keys, f"settings the chart cannot set: {set(fields) - keys}"
    # Each value parses, and equals the application's default unless the chart decides it.
    chart_decided = {
        "api_host": "0.0.0.0",
        "storage_dir": "/data",
        # the chart's own SeaweedFS: storage shared by every pod, at speed (README: storage backend)
        "storage_backend": "s3",
        "s3_endpoint": f"http://{SEAWEEDFS}:8333",
        # a cluster's logs go to a collector: one JSON object a line
        "log_format": "json",
    }
    parsed = pod_settings(data)
    for name in keys:
        expected = chart_decided.get(name, fields[name].get_default(call_default_factory=True))
        value = getattr(parsed, name)
        assert value == expected or str(value) == str(expected), name
    assert data["IMGFLOW_STREAM_MAXLEN"] == "1000000"  # not 1e+06
    assert data["IMGFLOW_MAX_UPLOAD_BYTES"] == "10485760"


def test_operator_settings_the_chart_sets_exist() -> None:
    operator_settings = pytest.importorskip("imgflow.operator.settings")
    docs = render(release=REL, namespace=NS)
    env = env_of(container(one(docs, "Deployment", OPERATOR)))
    fields = operator_settings.OperatorSettings.model_fields
    for name in env:
        if name.startswith("IMGFLOW_"):
            assert name.removeprefix("IMGFLOW_").lower() in fields, name
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


def test_api_deployment(default_docs: list[dict[str, Any]]) -> None:
    api = one(default_docs, "Deployment", API)
    c = container(api, "api")
    assert api["spec"]["replicas"] == 1
    assert c["image"] == "ghcr.io/imgflow/imgflow-api:0.1.0"
    assert c["command"] == ["imgflow-api"]
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert config_map(default_docs)["IMGFLOW_API_HOST"] == "0.0.0.0"
    assert config_map(default_docs)["IMGFLOW_API_PORT"] == "8000"
    env = env_of(c)
    assert env["IMGFLOW_REDIS_URL"] == {
        "secretKeyRef": {"name": f"{REL}-imgflow-connections", "key": "redis-url"}
    }
    assert env["IMGFLOW_MONGODB_URL"]["secretKeyRef"]["key"] == "mongodb-url"
    assert c["envFrom"] == [{"configMapRef": {"name": f"{REL}-imgflow-config"}}]
    svc = one(default_docs, "Service", API)
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert svc["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    assert api["spec"]["template"]["spec"]["automountServiceAccountToken"] is False


def test_a_deleted_api_pod_serves_on_before_it_stops() -> None:
    """The Service and kube-proxy forget a deleted pod only after its deletion: it sleeps in
    preStop before SIGTERM, and the sleep leaves time in the grace period for its requests."""
    api = one(render({}), "Deployment", API)
    assert container(api, "api")["lifecycle"]["preStop"] == {"exec": {"command": ["sleep", "5"]}}
    assert api["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 5 + 20
    api = one(render({"api": {"preStopSleepSeconds": 0}}), "Deployment", API)
    assert "lifecycle" not in container(api, "api")


def test_readiness_probes_wait_longer_than_a_check(default_docs: list[dict[str, Any]]) -> None:
    """A probe giving up when the check does would fail as a timeout instead of the 503 that
    names the backend not answering (what kubectl describe pod shows)."""
    for name, member in ((API, "api"), (WORKER, "worker")):
        probe = container(one(default_docs, "Deployment", name), member)["readinessProbe"]
        assert probe["timeoutSeconds"] > CHECK_TIMEOUT_S, (name, probe)


def test_only_the_api_reads_the_url_signing_key(default_docs: list[dict[str, Any]]) -> None:
    api = env_of(container(one(default_docs, "Deployment", API), "api"))
    assert api["IMGFLOW_URL_SIGNING_KEY"]["secretKeyRef"] == {
        "name": f"{REL}-imgflow-connections",
        "key": "url-signing-key",
        "optional": True,
    }
    assert api["IMGFLOW_URL_SIGNING_PREVIOUS_KEY"]["secretKeyRef"]["key"] == "url-signing-previous-key"
    for name in (WORKER, OPERATOR):
        env = env_of(container(one(default_docs, "Deployment", name)))
        assert not {"IMGFLOW_URL_SIGNING_KEY", "IMGFLOW_URL_SIGNING_PREVIOUS_KEY"} & set(env), name


@pytest.mark.parametrize("name", [API, WORKER, OPERATOR])
def test_imgflow_pods_get_a_writable_tmp(default_docs: list[dict[str, Any]], name: str) -> None:
    d = one(default_docs, "Deployment", name)
    spec = d["spec"]["template"]["spec"]
    tmp = next(v for v in spec["volumes"] if v["name"] == "tmp")
    assert "emptyDir" in tmp
    assert {"name": "tmp", "mountPath": "/tmp"} in spec["containers"][0]["volumeMounts"]
    # the pods roll when the configuration changes
    assert {"checksum/config", "checksum/connections"} <= set(
        d["spec"]["template"]["metadata"]["annotations"]
    )


def test_worker_is_set_up_for_the_operator(default_docs: list[dict[str, Any]]) -> None:
    worker = one(default_docs, "Deployment", WORKER)
    meta = worker["metadata"]
    assert meta["labels"]["imgflow.io/autoscale"] == "true"
    assert meta["annotations"] == {
        "imgflow.io/min-replicas": "1",
        "imgflow.io/max-replicas": "10",
        "imgflow.io/backlog-per-replica": "10",
        "imgflow.io/scale-to-zero": "false",
        "imgflow.io/scale-down-window-seconds": "60",
    }
    # the operator owns the replica count: Helm must not render (and on upgrade reset) it
    assert "replicas" not in worker["spec"]
    spec = worker["spec"]["template"]["spec"]
    assert spec["terminationGracePeriodSeconds"] > float(
        config_map(default_docs)["IMGFLOW_GRACEFUL_TIMEOUT_S"]
    )
    c = container(worker, "worker")
    assert c["command"] == ["imgflow-worker"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["ports"][0]["containerPort"] == 9100
    assert config_map(default_docs)["IMGFLOW_WORKER_METRICS_PORT"] == "9100"
    pdb = one(default_docs, "PodDisruptionBudget", WORKER)
    assert pdb["spec"]["selector"]["matchLabels"] == worker["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["maxUnavailable"] == 1
    # the API Deployment is not the operator's to scale
    assert "imgflow.io/autoscale" not in one(default_docs, "Deployment", API)["metadata"]["labels"]


def test_worker_autoscaling_off_renders_fixed_replicas() -> None:
    docs = render({"worker": {"autoscaling": {"enabled": False}, "replicas": 4}})
    worker = one(docs, "Deployment", WORKER)
    assert worker["spec"]["replicas"] == 4
    assert "imgflow.io/autoscale" not in worker["metadata"]["labels"]
    assert not worker["metadata"].get("annotations")


def test_worker_grace_period_follows_the_drain_timeout() -> None:
    docs = render({"config": {"gracefulTimeoutS": 90.5}})
    assert one(docs, "Deployment", WORKER)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 106
    docs = render({"worker": {"terminationGracePeriodSeconds": 120}})
    assert one(docs, "Deployment", WORKER)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 120


def test_operator_deployment(default_docs: list[dict[str, Any]]) -> None:
    op = one(default_docs, "Deployment", OPERATOR)
    assert op["spec"]["replicas"] == 1
    assert op["spec"]["strategy"] == {"type": "Recreate"}
    spec = op["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == OPERATOR
    c = container(op, "operator")
    assert c["command"] == ["imgflow-operator"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}


@pytest.mark.parametrize("production", [False, True])
def test_only_the_api_gets_the_admin_key_and_the_webhook_secret(
    default_docs: list[dict[str, Any]], production_docs: list[dict[str, Any]], production: bool
) -> None:
    """The workers parse untrusted images and the operator acts on what a namespace asks: neither
    gets a secret it does not use, by environment or volume (the connection URLs only)."""
    docs = production_docs if production else default_docs
    api = env_of(container(one(docs, "Deployment", API), "api"))
    assert api["IMGFLOW_ADMIN_KEY"]["secretKeyRef"]["key"] == "admin-key"
    assert api["IMGFLOW_WEBHOOK_SECRET"]["secretKeyRef"]["key"] == "webhook-secret"
    for name in (WORKER, OPERATOR):
        spec = one(docs, "Deployment", name)["spec"]["template"]["spec"]
        for c in spec["containers"]:
            env = env_of(c)
            assert not {"IMGFLOW_ADMIN_KEY", "IMGFLOW_WEBHOOK_SECRET"} & set(env), name
            refs = [v["secretKeyRef"] for v in env.values() if isinstance(v, dict) and "secretKeyRef" in v]
            secret_keys = {ref["key"] for ref in refs}
            assert not {"admin-key", "webhook-secret"} & secret_keys, name
            assert not [source for source in c.get("envFrom") or [] if "secretRef" in source], name
        assert not [v for v in spec.get("volumes") or [] if {"secret", "projected"} & set(v)], name


def test_the_operator_is_told_each_namespaces_tenant() -> None:
    """operator.namespaceTenants reaches the operator as the allow-list its settings read."""
    docs = render({"operator": {"namespaceTenants": {"shop": "acme"}}}, release=REL, namespace=NS)
    env = env_of(container(one(docs, "Deployment", OPERATOR)))
    told = OperatorSettings.model_validate(
        {"namespace_tenants": json.loads(env["IMGFLOW_NAMESPACE_TENANTS"])}
    )
    assert told.namespace_tenants == {"shop": "acme"}


def test_operator_rbac_is_exactly_the_agreed_rules(default_docs: list[dict[str, Any]]) -> None:
    def norm(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, tuple[str, ...]]]:
        out = set()
        for r in rules:
            assert "*" not in r["verbs"] and "*" not in r["resources"] and "*" not in r["apiGroups"]
            assert "nonResourceURLs" not in r
            for group in r["apiGroups"]:
                for resource in r["resources"]:
                    for verb in r["verbs"]:
                        out.add((group, resource, verb, tuple(r.get("resourceNames") or ())))
        return out

    # Only the verbs the operator sends (kopf reads by list+watch and writes by patch; see
    # templates/operator-rbac.yaml): no get, no update, no patching Events.
    role = norm(one(default_docs, "Role", OPERATOR)["rules"])
    expected: set[tuple[str, str, str, tuple[str, ...]]] = set()
    for verb in ("list", "watch", "patch", "delete"):
        expected.add(("imgflow.io", "imagejobs", verb, ()))
    expected.add(("imgflow.io", "imagejobs/status", "patch", ()))
    expected.add(("apps", "deployments/scale", "patch", (WORKER,)))
    expected.add(("", "events", "create", ()))
    for verb in ("list", "watch"):
        expected.add(("apps", "deployments", verb, ()))
    for verb in ("list", "watch", "patch"):
        expected.add(("", "pods", verb, ()))
    assert role == expected
    assert not any(resource == "secrets" for _, resource, _, _ in role)
    assert not any(group in ("events.k8s.io", "apiextensions.k8s.io") for group, _, _, _ in role)

    binding = one(default_docs, "RoleBinding", OPERATOR)
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": OPERATOR}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": OPERATOR, "namespace": NS}]


@pytest.mark.parametrize("values", [None, PRODUCTION_VALUES], ids=["default", "production"])
def test_nothing_cluster_scoped_is_rendered(values: Path | None) -> None:
    """The operator needs no cluster-scoped permission, and nothing else of the chart is
    cluster-scoped either: every object is in the release namespace."""
    docs = render(files=[values] if values else [])
    cluster_scoped = [
        f"{d['kind']}/{d['metadata']['name']}" for d in docs if d["kind"] in CLUSTER_SCOPED_KINDS
    ]
    assert cluster_scoped == []
    assert all(d["metadata"].get("namespace") == NS for d in docs)
    bindings = find(docs, "RoleBinding")
    assert [b["roleRef"]["kind"] for b in bindings] == ["Role"]  # no ClusterRole bound either


def test_operator_can_be_left_out() -> None:
    docs = render({"operator": {"enabled": False}})
    assert not [d for d in docs if d["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"]


def test_helm_test_pod_submits_an_image_and_waits(default_docs: list[dict[str, Any]]) -> None:
    pod = one(default_docs, "Pod", f"{REL}-imgflow-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    c = pod["spec"]["containers"][0]
    assert c["image"] == "python:3.11-slim"
    assert env_of(c)["API_URL"] == f"http://{API}:80"
    script = c["args"][0]
    compile(script, "helm-test", "exec")  # it is valid Python
    for needle in ("/readyz", "/api/image-processing/jobs", '"completed"', "userId"):
        assert needle in script


def test_helm_test_script_passes_against_a_real_api_and_worker(
    processes: Processes, redis_url: str, mongodb_url: str
) -> None:
    """The `helm test` pod's script, run here against a real API and worker (the pod itself never
    runs in these tests): it must see /readyz, submit its PNG and see the job complete."""
    pod = one(render(), "Pod", f"{REL}-imgflow-test")
    script = pod["spec"]["containers"][0]["args"][0]
    settings = make_settings(redis_url, mongodb_url)
    _, base_url = processes.start_api(settings)
    processes.start_worker(settings)
    proc = run_test_pod_script(script, base_url, settings, timeout_s=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "PASS" in proc.stdout


def run_test_pod_script(
    script: str, base_url: str, settings: Settings, timeout_s: int
) -> subprocess.CompletedProcess[str]:
    env = {
        "API_URL": base_url,
        "TIMEOUT_S": str(timeout_s),
        "PATH": os.environ.get("PATH", ""),
        # as the pod gets it from the release's Secret
        "IMGFLOW_ADMIN_KEY": settings.admin_key or "",
    }
    return subprocess.run(
        [sys.executable, "-u", "-c", script], env=env, capture_output=True, text=True, timeout=timeout_s + 60
    )


def test_helm_test_script_fails_when_no_worker_runs(
    processes: Processes, redis_url: str, mongodb_url: str
) -> None:
    pod = one(render(), "Pod", f"{REL}-imgflow-test")
    script = pod["spec"]["containers"][0]["args"][0]
    settings = make_settings(redis_url, mongodb_url)
    _, base_url = processes.start_api(settings)
    proc = run_test_pod_script(script, base_url, settings, timeout_s=10)
    assert proc.returncode != 0
    assert "FAIL: job not completed in time" in proc.stderr


# --- production-style values --------------------------------------------------------------------


def test_production_values_render_what_they_ask_for(production_docs: list[dict[str, Any]]) -> None:
    prod = yaml.safe_load(PRODUCTION_VALUES.read_text())
    names = {(d["kind"], d["metadata"]["name"]) for d in production_docs}
    # external databases: no in-cluster ones
    assert ("Deployment", REDIS) not in names and ("Deployment", MONGODB) not in names
    assert ("Service", REDIS) not in names and ("Service", MONGODB) not in names
    assert ("Deployment", SEAWEEDFS) not in names  # its own S3, credentials in a Secret of its own
    storage = pod_settings(config_map(production_docs))
    assert (storage.storage_backend, storage.s3_endpoint) == ("s3", prod["config"]["s3Endpoint"])
    s3_env = env_of(container(one(production_docs, "Deployment", WORKER)))["IMGFLOW_S3_ACCESS_KEY_ID"]
    assert s3_env["secretKeyRef"]["name"] == prod["s3Credentials"]["existingSecret"]
    urls = secret_data(one(production_docs, "Secret", f"{REL}-imgflow-connections"))
    assert urls.pop("admin-key").startswith("imgf_admin_")
    assert len(urls.pop("url-signing-key")) == 64
    assert urls == {"redis-url": prod["externalRedis"]["url"], "mongodb-url": prod["externalMongodb"]["url"]}

    api = one(production_docs, "Deployment", API)
    assert api["spec"]["replicas"] == 3
    assert (
        api["spec"]["template"]["spec"]["topologySpreadConstraints"]
        == prod["api"]["topologySpreadConstraints"]
    )
    assert container(api)["resources"] == prod["api"]["resources"]
    assert one(production_docs, "PodDisruptionBudget", API)["spec"]["maxUnavailable"] == 1

    ingress = one(production_docs, "Ingress", API)
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == prod["api"]["ingress"]["tls"]
    assert ingress["metadata"]["annotations"] == prod["api"]["ingress"]["annotations"]
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == "imgflow.example.com"
    assert rule["http"]["paths"][0]["backend"] == {"service": {"name": API, "port": {"name": "http"}}}

    worker = one(production_docs, "Deployment", WORKER)
    assert worker["metadata"]["annotations"]["imgflow.io/min-replicas"] == "2"
    assert worker["metadata"]["annotations"]["imgflow.io/max-replicas"] == "40"
    assert worker["metadata"]["annotations"]["imgflow.io/scale-down-window-seconds"] == "600"
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 70  # 55 s drain + 15
    assert config_map(production_docs)["IMGFLOW_WORKER_CONCURRENCY"] == "4"
    assert config_map(production_docs)["IMGFLOW_MAX_UPLOAD_BYTES"] == "20971520"

    sm = one(production_docs, "ServiceMonitor", f"{REL}-imgflow")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert {e["port"] for e in sm["spec"]["endpoints"]} == {"http", "metrics"}
    assert all(e["interval"] == "15s" and e["path"] == "/metrics" for e in sm["spec"]["endpoints"])
    # every component with metrics has a Service the ServiceMonitor selects, with the right port
    selected = [
        d
        for d in find(production_docs, "Service")
        if all(d["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items())
        and d["metadata"]["labels"]["app.kubernetes.io/component"] in ("api", "worker", "operator")
    ]
    ports = {
        (s["metadata"]["labels"]["app.kubernetes.io/component"], s["spec"]["ports"][0]["name"])
        for s in selected
    }
    assert ports == {("api", "http"), ("worker", "metrics"), ("operator", "metrics")}
    for name in (API, WORKER, OPERATOR):
        assert container(one(production_docs, "Deployment", name))["image"].endswith(":0.1.0")


def test_grafana_dashboard(production_docs: list[dict[str, Any]]) -> None:
    cm = one(production_docs, "ConfigMap", f"{REL}-imgflow-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "imgflow"}
    dashboard = json.loads(cm["data"]["imgflow.json"])
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for metric in (
        "imgflow_queue_backlog",
        "imgflow_jobs_submitted_total",
        "imgflow_jobs_completed_total",
        'status="failed"',
        "imgflow_job_duration_seconds_bucket",
        "imgflow_autoscaler_desired_replicas",
        "imgflow_autoscaler_current_replicas",
        "http_requests_total",
        "http_request_duration_seconds_bucket",
    ):
        assert metric in exprs, metric
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for word in ("backlog", "throughput", "latency", "failure", "replicas"):
        assert word in titles
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    assert not find(render(), "ConfigMap", f"{REL}-imgflow-dashboard")  # off by default


def test_existing_secret_replaces_the_chart_secret_and_the_dev_databases() -> None:
    docs = render(
        {"existingSecret": {"name": "imgflow-prod", "redisUrlKey": "REDIS", "mongodbUrlKey": "MONGO"}}
    )
    assert not find(docs, "Secret")
    assert not find(docs, "Deployment", REDIS) and not find(docs, "Deployment", MONGODB)
    for name in (API, WORKER, OPERATOR):
        d = one(docs, "Deployment", name)
        env = env_of(container(d))
        assert env["IMGFLOW_REDIS_URL"] == {"secretKeyRef": {"name": "imgflow-prod", "key": "REDIS"}}
        assert env["IMGFLOW_MONGODB_URL"] == {"secretKeyRef": {"name": "imgflow-prod", "key": "MONGO"}}
        assert "checksum/connections" not in d["spec"]["template"]["metadata"]["annotations"]


def test_one_external_database_keeps_the_other_in_cluster() -> None:
    docs = render({"externalRedis": {"url": "redis://redis.example:6379/1"}})
    assert not find(docs, "Deployment", REDIS)
    assert find(docs, "Deployment", MONGODB)
    urls = secret_data(one(docs, "Secret", f"{REL}-imgflow-connections"))
    assert urls["redis-url"] == "redis://redis.example:6379/1"
    assert urls["mongodb-url"] == f"mongodb://{MONGODB}:27017"


def test_dev_databases_keep_their_data_on_claims_with_persistence_on() -> None:
    # off by default: an emptyDir, lost with the pod (README.md, Operations)
    for name in (REDIS, MONGODB):
        volumes = one(render({}), "Deployment", name)["spec"]["template"]["spec"]["volumes"]
        assert {"name": "data", "emptyDir": {}} in volumes
    assert not find(render({}), "PersistentVolumeClaim")
    on = {"enabled": True, "storageClassName": "fast", "size": "2Gi"}
    docs = render({"redis": {"persistence": on}, "mongodb": {"persistence": {**on, "storageClassName": ""}}})
    for name, storage_class in ((REDIS, "fast"), (MONGODB, None)):
        claim = one(docs, "PersistentVolumeClaim", f"{name}-data")
        assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
        assert claim["spec"].get("storageClassName") == storage_class  # None: the cluster's default
        volumes = one(docs, "Deployment", name)["spec"]["template"]["spec"]["volumes"]
        assert {"name": "data", "persistentVolumeClaim": {"claimName": f"{name}-data"}} in volumes
    # an external Redis: no dev Redis, no claim for it
    external = render({"externalRedis": {"url": "redis://r:6379/0"}, "redis": {"persistence": on}})
    assert not find(external, "PersistentVolumeClaim")


def test_local_storage_mounts_the_shared_volume_everywhere() -> None:
    volume = {"persistentVolumeClaim": {"claimName": "imgflow-data"}}
    docs = render(
        {"config": {"storageBackend": "local", "storageDir": "/srv/imgflow"}, "storageVolume": volume}
    )
    for name in (API, WORKER, OPERATOR):
        spec = one(docs, "Deployment", name)["spec"]["template"]["spec"]
        assert {"name": "storage", **volume} in spec["volumes"]
        assert {"name": "storage", "mountPath": "/srv/imgflow"} in spec["containers"][0]["volumeMounts"]
    assert config_map(docs)["IMGFLOW_STORAGE_DIR"] == "/srv/imgflow"


def test_s3_storage_sets_the_bucket_and_the_credentials_from_a_secret() -> None:
    config = {
        "storageBackend": "s3",
        "s3Endpoint": "http://seaweedfs-s3.storage:8333",
        "s3Bucket": "thumbs",
        "s3Region": "eu-west-1",
        "s3Presign": True,
        "s3PublicEndpoint": "https://s3.example.com",
    }
    docs = render({"config": config, "s3Credentials": {"accessKeyId": "AK", "secretAccessKey": "SK"}})
    data = config_map(docs)
    storage = {k: v for k, v in data.items() if k.startswith(("IMGFLOW_S3_", "IMGFLOW_STORAGE_"))}
    parsed = pod_settings(storage)
    assert (parsed.storage_backend, parsed.s3_bucket, parsed.s3_region) == ("s3", "thumbs", "eu-west-1")
    assert (parsed.s3_endpoint, parsed.s3_public_endpoint) == (
        config["s3Endpoint"],
        config["s3PublicEndpoint"],
    )
    assert parsed.s3_presign is True
    assert "IMGFLOW_S3_SECRET_ACCESS_KEY" not in data  # never in the ConfigMap
    stored = secret_data(one(docs, "Secret", f"{REL}-imgflow-connections"))
    assert (stored["s3-access-key-id"], stored["s3-secret-access-key"]) == ("AK", "SK")
    secret = f"{REL}-imgflow-connections"
    for name in (API, WORKER, OPERATOR):
        env = env_of(container(one(docs, "Deployment", name)))
        assert env["IMGFLOW_S3_ACCESS_KEY_ID"] == {
            "secretKeyRef": {"name": secret, "key": "s3-access-key-id", "optional": True}
        }
        assert env["IMGFLOW_S3_SECRET_ACCESS_KEY"] == {
            "secretKeyRef": {"name": secret, "key": "s3-secret-access-key", "optional": True}
        }
    # the backends' Deployments roll when the credentials change
    other = render({"config": config, "s3Credentials": {"accessKeyId": "AK", "secretAccessKey": "SK2"}})
    annotations = one(docs, "Deployment", WORKER)["spec"]["template"]["metadata"]["annotations"]
    changed = one(other, "Deployment", WORKER)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/connections"] != changed["checksum/connections"]


def test_s3_credentials_from_a_secret_of_ones_own_or_the_pods_identity() -> None:
    own = render(
        {
            "seaweedfs": {"enabled": False},
            "s3Credentials": {"existingSecret": "aws", "accessKeyIdKey": "id", "secretAccessKeyKey": "key"},
        }
    )
    env = env_of(container(one(own, "Deployment", WORKER)))
    assert env["IMGFLOW_S3_ACCESS_KEY_ID"]["secretKeyRef"] == {"name": "aws", "key": "id", "optional": True}
    assert env["IMGFLOW_S3_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "aws"
    # none given: the chart's Secret holds none, and botocore finds the pod's identity (IRSA, ...)
    bare = render({"seaweedfs": {"enabled": False}})
    assert "s3-access-key-id" not in secret_data(one(bare, "Secret", f"{REL}-imgflow-connections"))
    # other backends are given no S3 credentials at all
    gridfs = render({"config": {"storageBackend": "gridfs"}})
    assert "IMGFLOW_S3_ACCESS_KEY_ID" not in env_of(container(one(gridfs, "Deployment", WORKER)))


def test_image_tags_and_digests() -> None:
    digest = "sha256:" + "a" * 64
    docs = render({"image": {"tag": "1.2.3"}, "worker": {"image": {"tag": "9.9.9", "digest": digest}}})
    assert container(one(docs, "Deployment", API))["image"] == "ghcr.io/imgflow/imgflow-api:1.2.3"
    assert (
        container(one(docs, "Deployment", WORKER))["image"]
        == f"ghcr.io/imgflow/imgflow-worker:9.9.9@{digest}"
    )


def test_long_release_names_stay_within_kubernetes_limits() -> None:
    release = "long-release-name-" + "x" * 35  # 53: the longest Helm accepts
    docs = render(release=release)
    for d in docs:
        assert len(d["metadata"]["name"]) <= 63, d["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", d["metadata"]["name"])
    names = [d["metadata"]["name"] for d in docs]
    assert len(names) == len({(d["kind"], d["metadata"]["name"]) for d in docs})


# --- security -----------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, PRODUCTION_VALUES], ids=["default", "production"])
def test_every_pod_meets_the_restricted_pod_security_standard(values: Path | None) -> None:
    docs = render(files=[values] if values else [])
    specs = dict(pod_specs(docs))
    expected = {f"Deployment/{n}" for n in (API, WORKER, OPERATOR)} | {f"Pod/{REL}-imgflow-test"}
    if values is None:
        expected |= {f"Deployment/{REDIS}", f"Deployment/{MONGODB}", f"Deployment/{SEAWEEDFS}"}
    assert set(specs) == expected
    for where, spec in specs.items():
        assert restricted_violations(spec) == [], where
        assert spec["securityContext"]["runAsUser"] == 10001, where
        assert spec["securityContext"]["runAsGroup"] == 10001, where
        for c in spec["containers"]:
            assert c.get("resources", {}).get("limits", {}).get("memory"), f"{where}: no memory limit"


def test_the_checker_catches_violations() -> None:
    docs = render()
    spec = dict(pod_specs(docs))[f"Deployment/{API}"]
    spec["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    spec["securityContext"].pop("seccompProfile")
    problems = restricted_violations(spec)
    assert any("allowPrivilegeEscalation" in p for p in problems)
    assert any("seccompProfile" in p for p in problems)


def test_platform_assigned_uids_are_possible() -> None:
    docs = render({"podSecurity": {"runAsUser": None, "runAsGroup": None, "fsGroup": None}})
    for where, spec in pod_specs(docs):
        sc = spec["securityContext"]
        assert sc["runAsNonRoot"] is True and "runAsUser" not in sc and "fsGroup" not in sc, where


# --- the schema and the template checks refuse bad values ---------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"api": {"replicaCount": 2}}, "at '/api': additional properties 'replicaCount' not allowed"),
        (
            {"worker": {"autoscalling": {"maxReplicas": 3}}},
            "at '/worker': additional properties 'autoscalling'",
        ),
        ({"confg": {"jpegQuality": 90}}, "additional properties 'confg' not allowed"),
        ({"config": {"jpegQualty": 90}}, "at '/config': additional properties 'jpegQualty' not allowed"),
        ({"api": {"replicas": -1}}, "at '/api/replicas': minimum: got -1, want 0"),
        ({"worker": {"autoscaling": {"maxReplicas": 0}}}, "at '/worker/autoscaling/maxReplicas'"),
        ({"config": {"jpegQuality": 101}}, "at '/config/jpegQuality': maximum"),
        (
            {"config": {"storageBackend": "swift"}},
            "at '/config/storageBackend': value must be one of 'gridfs', 'local', 's3'",
        ),
        ({"config": {"s3Endpoint": "s3.example:8333"}}, "at '/config/s3Endpoint'"),
        ({"config": {"s3Prefix": "imgflow"}}, "at '/config/s3Prefix'"),
        ({"s3Credentials": {"accessKey": "AK"}}, "at '/s3Credentials': additional properties 'accessKey'"),
        ({"api": {"service": {"type": "Ingress"}}}, "at '/api/service/type': value must be one of"),
        ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy': value must be one of"),
        ({"api": {"replicas": "two"}}, "at '/api/replicas': got string, want integer"),
        ({"worker": {"image": {"digest": "latest"}}}, "at '/worker/image/digest'"),
        ({"externalRedis": {"url": "http://redis"}}, "at '/externalRedis/url'"),
        ({"podSecurity": {"runAsUser": 0}}, "at '/podSecurity/runAsUser'"),
        ({"serviceMonitor": {"interval": "soon"}}, "at '/serviceMonitor/interval'"),
        ({"prometheusRule": {"failureRatio": 10}}, "at '/prometheusRule/failureRatio'"),
        ({"networkPolicy": {"privateCidrs": ["10.0.0.0"]}}, "at '/networkPolicy/privateCidrs/0'"),
        ({"worker": {"extraVolumeMounts": [{"name": "ca"}]}}, "at '/worker/extraVolumeMounts/0'"),
        ({"api": {"extraVolumes": [{"configMap": {"name": "ca"}}]}}, "at '/api/extraVolumes/0'"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else "",
)
def test_schema_refuses_bad_values(values: dict[str, Any], message: str, tmp_path: Path) -> None:
    proc = helm(
        "template",
        REL,
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        *template_args(values, directory=tmp_path),
        check=False,
    )
    assert proc.returncode != 0
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"worker": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}},
            "worker.autoscaling.minReplicas (5) must not exceed worker.autoscaling.maxReplicas (2)",
        ),
        (
            {"worker": {"autoscaling": {"minReplicas": 0}}},
            "worker.autoscaling.minReplicas=0 needs worker.autoscaling.scaleToZero=true",
        ),
        (
            {"worker": {"terminationGracePeriodSeconds": 25}},
            "worker.terminationGracePeriodSeconds (25) must exceed config.gracefulTimeoutS (25)",
        ),
        (
            {"worker": {"resources": {"limits": {"memory": "800Mi"}}}},
            "worker.resources.limits.memory (800Mi) must be at least config.workerMemoryMb + 256 MiB",
        ),
        (
            {"config": {"workerMemoryMb": 1024}},
            "worker.resources.limits.memory (1Gi) must be at least config.workerMemoryMb + 256 MiB "
            "for the process (1280 Mi)",
        ),
        ({"redis": {"enabled": False}}, "no Redis: set externalRedis.url, existingSecret.name"),
        ({"mongodb": {"enabled": False}}, "no MongoDB: set externalMongodb.url, existingSecret.name"),
        ({"config": {"storageBackend": "local"}}, "config.storageBackend=local needs storageVolume"),
        (
            {"s3Credentials": {"accessKeyId": "AK"}},
            "s3Credentials.accessKeyId and s3Credentials.secretAccessKey go together",
        ),
        (
            {
                "existingSecret": {"name": "s"},
                "s3Credentials": {"accessKeyId": "AK", "secretAccessKey": "SK"},
            },
            "put the credentials in that Secret",
        ),
        (
            {"config": {"storageBackend": "gridfs", "s3Presign": True}},
            "config.s3Presign needs config.storageBackend=s3",
        ),
        (
            {"existingSecret": {"name": "s"}, "externalRedis": {"url": "redis://r:6379/0"}},
            "existingSecret.name and externalRedis.url/externalMongodb.url exclude each other",
        ),
    ],
)
def test_template_checks_refuse_inconsistent_values(
    values: dict[str, Any], message: str, tmp_path: Path
) -> None:
    proc = helm(
        "template",
        REL,
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        *template_args(values, directory=tmp_path),
        check=False,
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_every_value_has_a_comment_and_a_schema_entry() -> None:
    """values.yaml documents each tunable (a `# --` comment above it, or above an enclosing key
    whose whole value it documents) and the schema knows every key."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = []
    stack: list[tuple[int, bool]] = []  # enclosing keys: (indent, documented)
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(?:- )?([A-Za-z][A-Za-z0-9]*):(.*)$", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        inherited = any(documented for _, documented in stack)
        block: list[str] = []
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            block.insert(0, lines[j].strip())
            j -= 1
        documented = bool(block) and block[0].startswith("# --")
        is_section = m.group(3).strip() == ""  # a mapping whose keys carry their own comments
        if not (documented or inherited or is_section):
            undocumented.append(line.strip())
        stack.append((indent, documented or inherited))
    assert undocumented == []

    def walk(values: Any, node: dict[str, Any], path: str) -> None:
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
        if "allOf" in node:
            node = {**node, **schema["definitions"][node["allOf"][0]["$ref"].rsplit("/", 1)[1]]}
        if not isinstance(values, dict) or "properties" not in node:
            return
        for key, value in values.items():
            assert key in node["properties"], f"{path}.{key} is not in values.schema.json"
            walk(value, node["properties"][key], f"{path}.{key}")

    walk(DEFAULT_VALUES, schema, "")
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"


# --- the files around the chart -----------------------------------------------------------------


def test_dockerfile_matches_the_chart() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M)
    assert re.search(r"^ARG UV_IMAGE=ghcr\.io/astral-sh/uv:[0-9.]+$", text, re.M)
    assert text.count("FROM ") == 3  # uv + build stage + runtime stage
    syncs = re.findall(r"uv sync ([^\n]+)", text)
    assert syncs and all(
        "--frozen --no-dev" in s and s.rstrip(" \\").endswith('--package "imgflow-$MEMBER"') for s in syncs
    )
    # only the member's own sources (and the core's) go into the image
    assert re.findall(r"^COPY (\S+)/src ", text, re.M) == ["core", "${MEMBER}"]
    uid = DEFAULT_VALUES["podSecurity"]["runAsUser"]
    gid = DEFAULT_VALUES["podSecurity"]["runAsGroup"]
    assert re.search(rf"^USER {uid}:{gid}$", text, re.M)
    assert f"--uid {uid}" in text and f"--gid {gid}" in text
    assert 'ln -s "imgflow-$MEMBER" /app/.venv/bin/imgflow-entrypoint' in text
    assert 'ENTRYPOINT ["imgflow-entrypoint"]' in text
    assert "TMPDIR=/tmp" in text and "PYTHONDONTWRITEBYTECODE=1" in text


def test_dockerignore_lets_in_what_the_dockerfile_copies() -> None:
    lines = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "**"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    sources = re.findall(r"^COPY (?!--from)(.+) \S+$", (ROOT / "Dockerfile").read_text(), re.M)
    for member in MEMBERS:
        for src in sources:
            for path in src.replace("${MEMBER}", member).split():
                assert path in allowed, f"the Dockerfile copies {path}, which .dockerignore leaves out"
                assert (ROOT / path).exists(), path


def skaffold_config() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / "skaffold.yaml").read_text()) if d]


def test_skaffold_builds_the_three_images_and_deploys_the_chart() -> None:
    (config,) = skaffold_config()
    assert re.fullmatch(r"skaffold/v4beta\d+", config["apiVersion"])
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    assert set(artifacts) == {f"imgflow-{m}" for m in MEMBERS}
    for member in MEMBERS:
        a = artifacts[f"imgflow-{member}"]
        assert a["context"] == "."
        assert a["docker"]["dockerfile"] == "Dockerfile"
        assert a["docker"]["buildArgs"] == {"MEMBER": member}
    (release,) = config["deploy"]["helm"]["releases"]
    assert (ROOT / release["chartPath"]).resolve() == CHART
    templates = release["setValueTemplates"]
    for member in MEMBERS:
        key = f"IMAGE_REPO_imgflow_{member}"
        assert templates[f"{member}.image.repository"] == f"{{{{.{key}}}}}"
        assert templates[f"{member}.image.tag"].startswith(f"{{{{.IMAGE_TAG_imgflow_{member}}}}}")


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for p in parents:
        values = values.setdefault(p, {})
    values[leaf] = value


@pytest.mark.parametrize("profile", [None, "kind"])
def test_skaffold_values_are_valid_chart_values(profile: str | None, tmp_path: Path) -> None:
    """The values skaffold sets (default and per profile) pass the schema and render."""
    (config,) = skaffold_config()
    release = config["deploy"]["helm"]["releases"][0]
    values: dict[str, Any] = {}
    set_values = dict(release.get("setValues") or {})
    templates = dict(release["setValueTemplates"])
    if profile:
        (prof,) = [p for p in config["profiles"] if p["name"] == profile]
        assert "deploy" not in prof, "the profile patches the release rather than replacing it"
        for patch in prof.get("patches") or []:
            prefix = "/deploy/helm/releases/0/setValues/"
            if patch["path"].startswith(prefix):
                assert patch["op"] in ("add", "replace")
                set_values[patch["path"].removeprefix(prefix).replace("~1", "/")] = patch["value"]
    for key, value in set_values.items():  # `helm --set` types them: "true" is a boolean, "4" a number
        _set_dotted(values, key, yaml.safe_load(value) if isinstance(value, str) else value)
    for key in templates:  # skaffold fills these with the built images
        _set_dotted(values, key, "imgflow-x")
    docs = render(values)
    assert find(docs, "Deployment", WORKER)
    if profile == "kind":
        assert find(docs, "Deployment", REDIS) and find(docs, "Deployment", MONGODB)


def test_kind_files_and_workflow_parse() -> None:
    cluster = yaml.safe_load((ROOT / "deploy" / "kind" / "cluster.yaml").read_text())
    assert cluster["kind"] == "Cluster" and cluster["apiVersion"].startswith("kind.x-k8s.io/")
    up = ROOT / "deploy" / "kind" / "up.sh"
    assert up.stat().st_mode & 0o111, "deploy/kind/up.sh is not executable"
    assert "skaffold run -p kind" in up.read_text()
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "kind.yaml").read_text())
    steps = [
        s.get("run", "") + str(s.get("uses", "")) for job in workflow["jobs"].values() for s in job["steps"]
    ]
    text = "\n".join(steps)
    for needle in ("skaffold run", "kind", "/api/image-processing/jobs", "completed", "replicas"):
        assert needle in text, needle


def test_readme_values_table_matches_values_yaml() -> None:
    """deploy/helm/imgflow/README.md lists every documented value with its current default."""
    readme = (CHART / "README.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Za-z0-9.]+)` \| `(.*?)` \|", readme, re.M))
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented: dict[str, str] = {}
    stack: list[tuple[int, str, bool]] = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            j -= 1
        doc = j + 1 < i and lines[j + 1].strip().startswith("# --")
        inherited = any(d for _, _, d in stack)
        path = [k for _, k, _ in stack] + [m.group(2)]
        if doc and not inherited:
            value: Any = DEFAULT_VALUES
            for key in path:
                value = value[key]
            documented[".".join(path)] = value
        stack.append((indent, m.group(2), doc or inherited))
    # helm-docs writes each default as compact JSON with sorted keys (and 30.0 as 30)
    assert {k: json.loads(v) for k, v in rows.items()} == documented


@pytest.mark.parametrize("component", MEMBERS)
def test_extra_volumes_and_env_reach_each_component(component: str) -> None:
    ca = {"name": "ca", "configMap": {"name": "corporate-ca"}}
    mount = {"name": "ca", "mountPath": "/etc/ssl/custom", "readOnly": True}
    env = {"name": "SSL_CERT_FILE", "value": "/etc/ssl/custom/ca.pem"}
    docs = render({component: {"extraVolumes": [ca], "extraVolumeMounts": [mount], "extraEnv": [env]}})
    for name in MEMBERS:
        spec = one(docs, "Deployment", f"{REL}-imgflow-{name}")["spec"]["template"]["spec"]
        c = spec["containers"][0]
        mine = name == component
        assert (ca in spec["volumes"]) is mine and (mount in c["volumeMounts"]) is mine, name
        assert (env in c["env"]) is mine, name
        # the chart's own /tmp stays
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


# --- network policies and aggregated roles ----------------------------------------------------


def policy(docs: list[dict[str, Any]], name: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "NetworkPolicy", name)["spec"]
    return spec


def selects(spec: dict[str, Any], docs: list[dict[str, Any]], deployment: str) -> bool:
    labels = one(docs, "Deployment", deployment)["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in spec["podSelector"]["matchLabels"].items())


def port_names(docs: list[dict[str, Any]], deployment: str) -> set[str]:
    return {p["name"] for p in container(one(docs, "Deployment", deployment))["ports"]}


def test_network_policies_are_off_by_default(default_docs: list[dict[str, Any]]) -> None:
    assert not find(default_docs, "NetworkPolicy")


def test_only_the_ingress_controller_prometheus_and_helm_test_reach_the_api() -> None:
    values = DEFAULT_VALUES["networkPolicy"]
    docs = render({"networkPolicy": {"enabled": True}})
    names = {d["metadata"]["name"] for d in find(docs, "NetworkPolicy")}
    assert names == {API, WORKER, OPERATOR, REDIS, MONGODB, SEAWEEDFS}
    api = policy(docs, API)
    assert selects(api, docs, API) and not selects(api, docs, WORKER)
    assert api["policyTypes"] == ["Ingress"]  # its egress (webhook receivers anywhere) stays open
    [rule] = api["ingress"]
    test_pod = one(docs, "Pod", f"{REL}-imgflow-test")["metadata"]["labels"]
    *peers, helm_test = rule["from"]
    assert peers == values["apiFrom"] + values["metricsFrom"]
    assert all(test_pod[k] == v for k, v in helm_test["podSelector"]["matchLabels"].items())
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}] and "http" in port_names(docs, API)
    for name in (WORKER, OPERATOR):
        spec = policy(docs, name)
        assert selects(spec, docs, name) and spec["policyTypes"] == ["Ingress", "Egress"]
        assert spec["ingress"] == [
            {"from": values["metricsFrom"], "ports": [{"port": "metrics", "protocol": "TCP"}]}
        ]
        assert "metrics" in port_names(docs, name)


def egress_peers(spec: dict[str, Any]) -> dict[str, list[Any]]:
    """Each egress rule's destinations, keyed by what it allows: "dns", a backend's port, "any"."""
    found: dict[str, list[Any]] = {}
    for rule in spec["egress"]:
        ports = {str(p["port"]) for p in rule.get("ports", [])}
        key = "dns" if "53" in ports else ",".join(sorted(ports)) or "any"
        found[key] = rule.get("to", [])
    return found


def test_workers_reach_dns_the_backends_and_public_addresses_only() -> None:
    docs = render({"networkPolicy": {"enabled": True}})
    rules = egress_peers(policy(docs, WORKER))
    assert rules["dns"] == DEFAULT_VALUES["networkPolicy"]["dnsTo"]
    for deployment, port in ((REDIS, 6379), (MONGODB, 27017), (SEAWEEDFS, 8333)):
        [peer] = rules[str(port)]
        assert selects(peer, docs, deployment), deployment
        assert container(one(docs, "Deployment", deployment))["ports"][0]["containerPort"] == port
    internet = {b["ipBlock"]["cidr"]: set(b["ipBlock"]["except"]) for b in rules["any"]}
    # the cluster's private ranges and the cloud metadata service are out of reach
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= internet["0.0.0.0/0"]
    assert {"fc00::/7", "fe80::/10"} <= internet["::/0"]
    assert set(rules) == {"dns", "6379", "27017", "8333", "any"}

    closed = render({"networkPolicy": {"enabled": True, "urlSources": False}})
    assert "any" not in egress_peers(policy(closed, WORKER))


def test_dns_is_reached_on_the_port_its_pods_name_too() -> None:
    # a policy sees the DNS pod's port, not the Service's 53: a non-root CoreDNS listens on another
    egress = policy(render({"networkPolicy": {"enabled": True}}), WORKER)["egress"]
    [dns] = [r for r in egress if {"port": 53, "protocol": "UDP"} in r.get("ports", [])]
    ports = {(p["port"], p["protocol"]) for p in dns["ports"]}
    assert ports == {(53, "UDP"), (53, "TCP"), ("dns", "UDP"), ("dns-tcp", "TCP")}


def test_only_the_release_reaches_its_dev_databases() -> None:
    docs = render({"networkPolicy": {"enabled": True}})
    for deployment, port in ((REDIS, 6379), (MONGODB, 27017), (SEAWEEDFS, 8333)):
        spec = policy(docs, deployment)
        assert selects(spec, docs, deployment) and spec["policyTypes"] == ["Ingress"], deployment
        [rule] = spec["ingress"]
        assert rule["ports"] == [{"port": port, "protocol": "TCP"}]
        [peer] = rule["from"]
        selector = peer["podSelector"]
        [components] = selector["matchExpressions"]
        assert components == {
            "key": "app.kubernetes.io/component",
            "operator": "In",
            "values": ["api", "worker", "operator"],
        }
        for component in (API, WORKER, OPERATOR):
            labels = one(docs, "Deployment", component)["spec"]["template"]["metadata"]["labels"]
            assert all(labels[k] == v for k, v in selector["matchLabels"].items())
            assert labels[components["key"]] in components["values"]
        # a pod of the release that is none of those (the helm test pod) is not let in
        test_pod = one(docs, "Pod", f"{REL}-imgflow-test")["metadata"]["labels"]
        assert test_pod[components["key"]] not in components["values"]

    external = render(
        {
            "networkPolicy": {"enabled": True},
            "externalRedis": {"url": "redis://redis.example:6379/0"},
            "externalMongodb": {"url": "mongodb://mongo.example:27017"},
            "seaweedfs": {"enabled": False},
        }
    )
    assert {d["metadata"]["name"] for d in find(external, "NetworkPolicy")} == {API, WORKER, OPERATOR}


def test_external_backends_come_from_extra_egress() -> None:
    extra = [{"to": [{"ipBlock": {"cidr": "10.1.2.3/32"}}], "ports": [{"port": 6379}]}]
    docs = render(
        {
            "networkPolicy": {"enabled": True, "extraEgress": extra, "kubernetesApiCidrs": ["10.96.0.1/32"]},
            "externalRedis": {"url": "redis://redis.example:6379/0"},
            "externalMongodb": {"url": "mongodb://mongo.example:27017"},
            "seaweedfs": {"enabled": False},
        }
    )
    for name in (WORKER, OPERATOR):
        spec = policy(docs, name)
        assert extra[0] in spec["egress"], name
        peers = [p for r in spec["egress"] for p in r.get("to", [])]
        assert not any("app.kubernetes.io/instance" in str(p) for p in peers), name  # no dev database
    kube_api = egress_peers(policy(docs, OPERATOR))["443,6443"]
    assert kube_api == [{"ipBlock": {"cidr": "10.96.0.1/32"}}]


def test_aggregated_imagejob_roles() -> None:
    docs = render({"aggregatedRoles": {"enabled": True}})
    roles = {d["metadata"]["name"]: d for d in find(docs, "ClusterRole")}
    view, edit = roles[f"{NS}-{REL}-imgflow-imagejobs-view"], roles[f"{NS}-{REL}-imgflow-imagejobs-edit"]
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in edit["metadata"]["labels"]
    assert {v for r in view["rules"] for v in r["verbs"]} == {"get", "list", "watch"}
    assert all(r["apiGroups"] == ["imgflow.io"] for role in roles.values() for r in role["rules"])
    assert not find(render(), "ClusterRole")  # off by default
