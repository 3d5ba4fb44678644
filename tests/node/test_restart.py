"""The cluster's own restart, as a user does it: `make cluster-down` with jobs waiting, then
`make cluster-up` and `make deploy` on the data kept. The release serves when `make deploy`
returns: `helm test` passes at once (its upload has 10 s), the jobs that waited complete, and so
does a new upload.

What made the first `helm test` after a restart time out: the dev SeaweedFS Ready while its
master had no leader yet (its probe now asks the master), and the API Ready before its storage
answered and before it had made its S3 client, which the first upload then made (3-4 s of a
loaded node). /readyz now asks the storage, both clients are made before the API serves, and
`make deploy` waits for /readyz through the API's Service.

Runs after tests/node/test_chart_on_node.py (file order), which leaves no release behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from imgflow.harness import images
from imgflow.harness.helm_chart import helm
from imgflow.harness.kube import cluster_sh
from tests.node.conftest import Node, make_deploy, port_forward, wait_until
from tests.node.test_chart_on_node import NS, RELEASE, admin_key

JOBS = 8
PHOTO = images.jpeg(2400, 1800)
# A guard against a hang, no target: on a loaded machine the node takes minutes to come back.
pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def released(node: Node) -> Iterator[None]:
    """The chart with its default values (one worker always up), as `make deploy` installs it."""
    make_deploy(node, NS, RELEASE)
    yield
    helm("uninstall", RELEASE, "-n", NS, "--ignore-not-found", kubeconfig=node.kube.kubeconfig)


def tenant_key(client: httpx.Client, node: Node) -> str:
    made = client.post(
        "/api/admin/keys",
        json={"tenant": "restart", "scopes": ["jobs:write", "jobs:read"], "name": "restart test"},
        headers={"Authorization": f"Bearer {admin_key(node)}"},
    )
    assert made.status_code == 201, made.text
    key: str = made.json()["key"]
    return key


def submit(client: httpx.Client) -> str:
    created = client.post(
        "/api/image-processing/jobs",
        files={"file": ("photo.jpg", PHOTO, "image/jpeg")},
        # A large AVIF takes the worker seconds: the jobs are still queued at `cluster-down`.
        data={"userId": "restart", "width": "1600", "height": "1200", "format": "avif"},
    )
    assert created.status_code == 202, created.text
    job_id: str = created.json()["jobId"]
    return job_id


def statuses(client: httpx.Client, job_ids: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for job_id in job_ids:
        job: dict[str, Any] = client.get(f"/api/image-processing/jobs/{job_id}").json()
        found[job_id] = job["status"]
    return found


def logs(node: Node) -> str:
    """The first lines the API and the worker wrote since the restart: what failed shows there."""
    said = [node.kube.kubectl("get", "pods", "-n", NS, "-o", "wide", check=False).stdout]
    for component in ("api", "worker"):
        got = node.kube.kubectl("logs", "-n", NS, f"deploy/{RELEASE}-{component}", check=False)
        said.append(f"--- {component}:\n" + "\n".join((got.stdout + got.stderr).splitlines()[:30]))
    test_pod = node.kube.kubectl("logs", "-n", NS, f"{RELEASE}-test", check=False)
    said.append("--- helm test pod:\n" + test_pod.stdout[-1500:])
    return "\n" + "\n".join(said)


def test_jobs_waiting_at_cluster_down_complete_after_up_and_deploy(node: Node, released: None) -> None:
    with (
        port_forward(node.kube, NS, "svc/imgflow-api", 80) as api,
        httpx.Client(base_url=api.url, timeout=30) as c,
    ):
        key = tenant_key(c, node)
        c.headers["Authorization"] = f"Bearer {key}"
        job_ids = [submit(c) for _ in range(JOBS)]
        before = statuses(c, job_ids)
    # One worker makes a large AVIF in seconds: most of the jobs still wait when the node goes down.
    assert list(before.values()).count("completed") < JOBS, before

    down = cluster_sh(node.dir, "down", node=True)
    assert down.returncode == 0, down.stderr
    up = cluster_sh(node.dir, "up", node=True)
    assert up.returncode == 0, up.stderr
    make_deploy(node, NS, RELEASE)  # returns once the release answers: nothing waits here
    with (
        port_forward(node.kube, NS, "svc/imgflow-api", 80) as api,
        httpx.Client(base_url=api.url, timeout=30) as c,
    ):
        # What NOTES.txt tells a user to check: every backend an upload needs answers.
        ready = c.get("/readyz")
        assert ready.json() == {
            "status": "ready",
            "checks": dict.fromkeys(("mongodb", "redis", "storage"), "ok"),
        }

    # What a user checks first after `make deploy`, with no retry: readiness means serving.
    checked = helm(
        "test",
        RELEASE,
        "-n",
        NS,
        "--timeout",
        "3m",
        kubeconfig=node.kube.kubeconfig,
        timeout=200,
        check=False,
    )
    assert "Phase:          Succeeded" in checked.stdout, checked.stdout + checked.stderr + logs(node)
    with (
        port_forward(node.kube, NS, "svc/imgflow-api", 80) as api,
        httpx.Client(base_url=api.url, timeout=30, headers={"Authorization": f"Bearer {key}"}) as c,
    ):
        job_ids.append(submit(c))

        def all_completed() -> bool:
            now = statuses(c, job_ids)
            assert "failed" not in now.values(), now
            return set(now.values()) == {"completed"}

        wait_until(
            "the jobs that waited through the restart, and a new one, completed", all_completed, within=300
        )
