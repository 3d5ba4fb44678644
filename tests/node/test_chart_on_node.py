"""The chart for real: `make deploy`'s script installs it on the node with the images built here,
under the restricted Pod Security Standard; then what a platform team checks after an install.

The tests run in file order on one release: install, helm test, an upload through the API
Service, an ImageJob of URL sources served in the cluster, autoscaling with real pods, an upgrade,
the uninstall.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.session
import httpx
import pytest
import pyvips
from botocore.exceptions import ClientError

from imgflow.harness import autoscale, images
from imgflow.harness.helm_chart import helm
from imgflow.harness.operator import events_for, metric
from tests.node.conftest import Node, make_deploy, port_forward, wait_until

NS = "imgflow"
RELEASE = "imgflow"
COMPONENTS = ("api", "worker", "operator", "redis", "mongodb", "seaweedfs")


def deploy(node: Node, *extra: str) -> str:
    return make_deploy(node, NS, RELEASE, *autoscale.AUTOSCALE_VALUES, *extra)


def deployments(node: Node) -> dict[str, dict[str, Any]]:
    items = node.kube.kubectl_json(
        "get", "deployments", "-n", NS, "-l", f"app.kubernetes.io/instance={RELEASE}"
    )
    return {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in items["items"]}


@pytest.fixture(scope="module")
def installed(node: Node) -> Iterator[str]:
    """The release, installed by scripts/deploy.sh; what it printed."""
    out = deploy(node)
    yield out
    helm("uninstall", RELEASE, "-n", NS, "--ignore-not-found", kubeconfig=node.kube.kubeconfig)


def test_deploy_installs_a_ready_release_under_the_restricted_standard(node: Node, installed: str) -> None:
    labels = node.kube.kubectl_json("get", "namespace", NS)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    found = deployments(node)
    assert set(found) == set(COMPONENTS)
    for component, d in found.items():
        if component != "worker":  # the operator scales the workers (to 0 when idle)
            assert d["status"].get("readyReplicas") == d["spec"]["replicas"] >= 1, component
    # The pods were admitted under "restricted": each runs as UID 10001 with a read-only root.
    pods = node.kube.kubectl_json("get", "pods", "-n", NS, "-l", f"app.kubernetes.io/instance={RELEASE}")
    for pod in pods["items"]:
        for c in pod["spec"]["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["spec"]["securityContext"]["runAsUser"] == 10001
        assert all(c["image"].startswith("imgflow.local/") for c in pod["spec"]["containers"])
    assert "port-forward svc/imgflow-api 8080:80" in installed


def test_helm_test_passes(node: Node, installed: str) -> None:
    # The test pod submits an image through the API Service and waits for it to complete.
    out = helm(
        "test", RELEASE, "-n", NS, "--timeout", "5m", kubeconfig=node.kube.kubeconfig, timeout=330
    ).stdout
    assert "Phase:          Succeeded" in out, out


def admin_key(node: Node) -> str:
    """The bootstrap admin key the chart generated into its Secret, read as NOTES.txt says."""
    secret = node.kube.kubectl_json("get", "secret", "imgflow-connections", "-n", NS)
    return base64.b64decode(secret["data"]["admin-key"]).decode()


def s3_pair(node: Node) -> tuple[str, str]:
    data = node.kube.kubectl_json("get", "secret", "imgflow-connections", "-n", NS)["data"]
    return data["s3-access-key-id"], data["s3-secret-access-key"]


def test_an_upload_through_the_api_service_completes(node: Node, installed: str) -> None:
    assert "export ADMIN_KEY=$(" in installed  # make deploy tells how to read the key
    with (
        port_forward(node.kube, NS, "svc/imgflow-api", 80) as api,
        httpx.Client(base_url=api.url, timeout=30) as open_client,
    ):
        # keys are on by default: nothing without one
        refused = open_client.get("/api/image-processing/users/node-test/jobs")
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
        made = open_client.post(
            "/api/admin/keys",
            json={"tenant": "node", "scopes": ["jobs:write", "jobs:read"], "name": "node test"},
            headers={"Authorization": f"Bearer {admin_key(node)}"},
        )
        assert made.status_code == 201, made.text
        key = made.json()["key"]
        with httpx.Client(base_url=api.url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
            created = client.post(
                "/api/image-processing/jobs",
                files={"file": ("photo.jpg", images.jpeg(1280, 960), "image/jpeg")},
                data={"userId": "node-test"},
            )
            assert created.status_code == 202, created.text
            job_id = created.json()["jobId"]

            def completed() -> dict[str, Any] | None:
                job: dict[str, Any] = client.get(f"/api/image-processing/jobs/{job_id}").json()
                assert job["status"] != "failed", job
                return job if job["status"] == "completed" else None

            # The workers start from 0: the operator wakes one for this job.
            job = wait_until("the uploaded job completed", completed, within=180)
            assert isinstance(job, dict)
            thumbnail = client.get(job["result"]["thumbnailUrl"])
            assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
            image = pyvips.Image.new_from_buffer(thumbnail.content, "")
            assert (image.width, image.height) == (100, 100)
    assert_stored_in_the_dev_seaweedfs(node, thumbnail.content)


def assert_stored_in_the_dev_seaweedfs(node: Node, thumbnail: bytes) -> None:
    """The chart's default storage: the API pod stored the upload and the worker pod its thumbnail
    in the dev SeaweedFS, which answers only requests signed with the pair in the chart's Secret."""
    config = node.kube.kubectl_json("get", "configmap", "imgflow-config", "-n", NS)["data"]
    assert (config["IMGFLOW_STORAGE_BACKEND"], config["IMGFLOW_S3_ENDPOINT"]) == (
        "s3",
        "http://imgflow-seaweedfs:8333",
    )
    key_id, secret = (base64.b64decode(v).decode() for v in s3_pair(node))
    with port_forward(node.kube, NS, "svc/imgflow-seaweedfs", 8333) as s3:
        client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=s3.url,
            region_name="us-east-1",
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
        )
        listed = client.list_objects_v2(Bucket="imgflow")["Contents"]  # type: ignore[attr-defined]
        sizes = [o["Size"] for o in listed]
        assert len(thumbnail) in sizes and max(sizes) > len(thumbnail), sizes  # thumbnail and original
        assert httpx.get(f"{s3.url}/imgflow/{listed[0]['Key']}").status_code == 403  # unsigned
        forged = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=s3.url,
            region_name="us-east-1",
            aws_access_key_id=key_id,
            aws_secret_access_key="x" * 40,
        )
        with pytest.raises(ClientError, match="SignatureDoesNotMatch"):
            forged.list_objects_v2(Bucket="imgflow")  # type: ignore[attr-defined]


def test_an_image_job_of_in_cluster_urls_succeeds_with_progress_and_events(
    node: Node, installed: str
) -> None:
    kube = node.kube
    base = autoscale.base_image()
    kube.kubectl(
        "apply",
        "--server-side",
        "-n",
        NS,
        "-f",
        "-",
        input=autoscale.source_server_manifest(base, images.jpeg()),
    )
    kube.kubectl("rollout", "status", "deployment/sources", "-n", NS, "--timeout=120s")
    autoscale.wait_until_routed(kube.kubeconfig, NS, RELEASE)
    sources = [{"url": f"http://sources/photo-{i}.jpg?delay=0.5"} for i in range(4)]
    job = {
        "apiVersion": "imgflow.io/v1alpha1",
        "kind": "ImageJob",
        "metadata": {"name": "in-cluster"},
        "spec": {"userId": "node-test", "sources": sources},
    }
    kube.kubectl("create", "-n", NS, "-f", "-", input=json.dumps(job))
    progress: set[str] = set()

    def succeeded() -> bool:
        header, row = kube.kubectl("get", "ij", "in-cluster", "-n", NS).stdout.splitlines()
        assert header.split() == ["NAME", "PHASE", "SUCCEEDED", "FAILED", "AGE"], header
        # Until the operator writes a status the PHASE and SUCCEEDED columns are empty.
        phase = row[header.index("PHASE") :].split()[0] if row[header.index("PHASE")] != " " else ""
        progress.add(row[header.index("SUCCEEDED") : header.index("FAILED")].strip())
        return phase == "Succeeded"

    try:
        wait_until("ImageJob in-cluster Succeeded", succeeded, within=180, every=0.2)
    except AssertionError:
        status = kube.kubectl("get", "ij", "in-cluster", "-n", NS, "-o", "jsonpath={.status}", check=False)
        logs = {
            d: kube.kubectl("logs", "-n", NS, f"deploy/{RELEASE}-{d}", "--tail=40", check=False)
            for d in ("worker", "operator", "api")
        }
        raise AssertionError(
            f"status: {status.stdout}\n"
            + "\n".join(f"--- {d}:\n{p.stdout}{p.stderr}" for d, p in logs.items())
        ) from None
    assert "4/4" in progress, progress
    done = kube.kubectl_json("get", "ij", "in-cluster", "-n", NS)
    assert done["status"]["succeeded"] == 4
    described = kube.kubectl("describe", "ij", "in-cluster", "-n", NS).stdout
    events = described.split("Events:", 1)[1]
    assert "Submitted" in events and "Succeeded" in events, described


def test_workers_scale_up_from_zero_and_back_with_real_pods_interrupting_no_job(
    node: Node, installed: str, tmp_path: Path
) -> None:
    figures = autoscale.run(node.kube.kubeconfig, NS, RELEASE, cycles=5, jobs=12, delay=2.0)
    (tmp_path / "autoscale.json").write_text(json.dumps(figures, indent=2))
    print(autoscale.summary(figures))
    assert figures["interrupted"] == {"given_back": 0, "redelivered": 0}, figures
    assert figures["jobs"] == 60
    assert [c["max_replicas"] for c in figures["cycles"]] == [3] * 5  # 12 queued, 2 per worker, 3 at most
    assert figures["ups"] >= 5 and figures["downs"] >= 5

    # The operator said so: Events on the Deployment, and its metrics.
    events = events_for(node.kube.kubectl, NS, "Deployment", f"{RELEASE}-worker")
    messages = [e["message"] for e in events]
    assert {"ScaledUp", "ScaledDown"} <= {e["reason"] for e in events}, messages
    assert any(m.startswith("Scaled from 0 to ") and "backlog" in m for m in messages), messages
    operator_ip = autoscale.pod_ip(node.kube.kubeconfig, NS, "operator")
    exposition = httpx.get(f"http://{operator_ip}:9090/metrics", timeout=10).text
    for direction in ("up", "down"):
        decisions = metric(
            exposition,
            "imgflow_autoscaler_decisions_total",
            deployment=f"{RELEASE}-worker",
            direction=direction,
        )
        assert decisions is not None and decisions >= 5, exposition


def test_an_upgrade_rolls_the_pods_and_keeps_the_operators_replica_count(node: Node, installed: str) -> None:
    before = deployments(node)
    key_before = admin_key(node)
    s3_before = s3_pair(node)
    assert before["worker"]["spec"]["replicas"] == 0  # idle: the operator scaled the workers to zero
    api_pods = {p["metadata"]["name"] for p in autoscale.pods(node.kube.kubeconfig, NS, "api")}

    replicas_seen: list[int] = []
    stop = threading.Event()

    def watch_workers() -> None:
        while not stop.is_set():
            replicas_seen.append(deployments(node)["worker"]["spec"]["replicas"])
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_workers, daemon=True)
    watcher.start()
    try:
        deploy(node, "--set", "config.workerConcurrency=3", "--set", "api.replicas=2")
    finally:
        stop.set()
        watcher.join()
    after = deployments(node)
    assert after["api"]["spec"]["replicas"] == 2 and after["api"]["status"]["readyReplicas"] == 2
    config = node.kube.kubectl_json("get", "configmap", "imgflow-config", "-n", NS)
    assert config["data"]["IMGFLOW_WORKER_CONCURRENCY"] == "3"
    assert admin_key(node) == key_before  # the generated admin key survives the upgrade
    assert s3_pair(node) == s3_before  # and the dev SeaweedFS's pair: its data stays readable
    # The changed configuration rolled the API: every pod serving is new (old ones are terminating).
    new_pods = {
        p["metadata"]["name"]
        for p in autoscale.pods(node.kube.kubeconfig, NS, "api")
        if "deletionTimestamp" not in p["metadata"]
    }
    assert api_pods.isdisjoint(new_pods), (api_pods, new_pods)
    # Helm never set the workers' replicas: they stayed where the operator had them.
    assert set(replicas_seen) == {0}, replicas_seen


def test_uninstall_leaves_nothing_of_the_release(node: Node, installed: str) -> None:
    kube = node.kube
    out = helm(
        "uninstall", RELEASE, "-n", NS, "--wait", "--timeout", "3m", kubeconfig=kube.kubeconfig, timeout=200
    ).stdout
    assert "uninstalled" in out

    def gone() -> bool:
        kinds = ",".join(
            ["deployments", "replicasets", "pods", "services", "configmaps", "secrets"]
            + ["serviceaccounts", "roles", "rolebindings", "poddisruptionbudgets"]
        )
        left = kube.kubectl(
            "get", kinds, "-n", NS, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name"
        ).stdout
        helm_secrets = kube.kubectl("get", "secrets", "-n", NS, "-l", "owner=helm", "-o", "name").stdout
        return not (left.strip() or helm_secrets.strip())

    wait_until("nothing of the release left", gone, within=120)
    kube.kubectl("get", "crd", "imagejobs.imgflow.io")  # Helm never deletes crds/: kept by policy
