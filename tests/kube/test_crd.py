"""The ImageJob CRD (deploy/helm/imgflow/crds/imagejobs.imgflow.io.yaml) as a real API server
serves it: names, printer columns, defaults, explain text, admission-time validation, immutability.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from imgflow.harness.kube import CRDS, Kube

CRD_NAME = "imagejobs.imgflow.io"
UPLOAD_ID = "3f2c1a9e-8b7d-4c6e-9f10-2a3b4c5d6e7f"
VALID_SPEC: dict[str, Any] = {
    "userId": "user-1",
    "sources": [{"url": "https://example.com/cat.jpg"}, {"uploadId": UPLOAD_ID}],
}


def manifest(name: str, spec: dict[str, Any] | None) -> str:
    doc: dict[str, Any] = {
        "apiVersion": "imgflow.io/v1alpha1",
        "kind": "ImageJob",
        "metadata": {"name": name},
    }
    if spec is not None:
        doc["spec"] = spec
    return json.dumps(doc)


def create(kube: Kube, namespace: str, name: str, spec: dict[str, Any]) -> None:
    kube.kubectl("create", "-n", namespace, "-f", "-", input=manifest(name, spec))


def set_status(kube: Kube, namespace: str, name: str, status: dict[str, Any]) -> None:
    patch = json.dumps({"status": status})
    kube.kubectl(
        "patch", "imagejob", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", patch
    )


def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / f"{CRD_NAME}.yaml").read_text())
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


def walk(schema: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from walk(sub, f"{path}.{key}")
    if "items" in schema:
        yield from walk(schema["items"], f"{path}[]")


def test_every_field_has_a_description() -> None:
    # metadata is the one exception: the API server forbids saying anything about it.
    fields = walk(crd_schema(), "imagejob")
    missing = [path for path, sub in fields if not sub.get("description", "").strip()]
    assert missing == ["imagejob.metadata"]


def test_crd_is_established_with_its_names(kube: Kube) -> None:
    crd = kube.kubectl_json("get", "crd", CRD_NAME)
    conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    names = crd["status"]["acceptedNames"]
    assert (names["kind"], names["plural"], names["shortNames"]) == ("ImageJob", "imagejobs", ["ij"])
    assert crd["spec"]["scope"] == "Namespaced"
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}

    resources = kube.kubectl("api-resources", "--api-group=imgflow.io", "--no-headers").stdout.split()
    assert resources == ["imagejobs", "ij", "imgflow.io/v1alpha1", "true", "ImageJob"]


def test_omitted_operations_take_their_defaults(kube: Kube, namespace: str) -> None:
    create(kube, namespace, "defaults", VALID_SPEC)
    job = kube.kubectl_json("get", "imagejob", "defaults", "-n", namespace)
    assert job["spec"]["operations"] == {
        "thumbnail": {
            "width": 100,
            "height": 100,
            "fit": "cover",
            "format": "jpeg",
            "gravity": "centre",
            "grayscale": False,
        }
    }
    assert "ttlSecondsAfterFinished" not in job["spec"]
    assert "status" not in job


def test_get_prints_phase_progress_failed_and_age(kube: Kube, namespace: str) -> None:
    create(
        kube,
        namespace,
        "batch",
        {"userId": "user-7", "sources": [{"url": f"https://e.com/{i}.png"} for i in range(5)]},
    )
    set_status(
        kube,
        namespace,
        "batch",
        {"phase": "Running", "total": 5, "succeeded": 3, "failed": 1, "progress": "3/5"},
    )

    for resource in ("imagejobs", "ij", "imagejob.imgflow.io", "imgflow"):
        header, row = kube.kubectl("get", resource, "-n", namespace).stdout.splitlines()
        assert header.split() == ["NAME", "PHASE", "SUCCEEDED", "FAILED", "AGE"], resource
        assert row.split()[:4] == ["batch", "Running", "3/5", "1"], resource

    header, row = kube.kubectl("get", "ij", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert header.split() == ["NAME", "PHASE", "SUCCEEDED", "FAILED", "AGE", "USER", "TENANT", "FINISHED"]
    assert row.split()[:4] + row.split()[5:6] == ["batch", "Running", "3/5", "1", "user-7"]


def explain(kube: Kube, field: str) -> str:
    """``kubectl explain FIELD``, retried while the API server has not published the CRD's
    OpenAPI yet (only possible with a cluster from IMGFLOW_KUBECONFIG that just got the CRD)."""
    deadline = time.monotonic() + 60
    while True:
        proc = kube.kubectl("explain", field, check=False)
        if proc.returncode == 0 or time.monotonic() > deadline:
            assert proc.returncode == 0, proc.stderr
            return " ".join(proc.stdout.split())  # explain wraps lines
        time.sleep(0.5)


def test_explain_teaches_the_spec(kube: Kube) -> None:
    spec = explain(kube, "imagejob.spec")
    assert "Immutable after creation" in spec
    for field in ("userId", "sources", "operations", "ttlSecondsAfterFinished"):
        assert field in spec
    assert "userId form field" in spec and "tenant" in spec

    sources = explain(kube, "imagejob.spec.sources")
    assert "1 to 1000" in sources
    assert "exactly one of url or uploadId" in sources
    assert "An http:// or https:// URL" in sources
    assert "already uploaded through the HTTP API" in sources

    fit = explain(kube, "ij.spec.operations.thumbnail.fit")
    assert "cover: fill the box" in fit
    assert "inside" in fit


def src(**fields: str) -> dict[str, Any]:
    return {**VALID_SPEC, "sources": [fields]}


def thumb(**fields: Any) -> dict[str, Any]:
    return {**VALID_SPEC, "operations": {"thumbnail": fields}}


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in VALID_SPEC.items() if k != key}


ONE_OF = "exactly one of url or uploadId"
MATCH = "should match"
THUMB = "spec.operations.thumbnail"
URL0 = "spec.sources[0].url"
INVALID = [
    # spec, the field the error names, words of the error; id
    pytest.param(None, "spec", "Required value", id="no-spec"),
    pytest.param(without("userId"), "spec.userId", "Required value", id="no-userId"),
    pytest.param({**VALID_SPEC, "userId": ""}, "spec.userId", "at least 1 chars long", id="empty-userId"),
    pytest.param({**VALID_SPEC, "userId": "u" * 129}, "spec.userId", "more than 128", id="long-userId"),
    pytest.param(without("sources"), "spec.sources", "Required value", id="no-sources"),
    pytest.param({**VALID_SPEC, "sources": []}, "spec.sources", "at least 1 items", id="empty-sources"),
    pytest.param(
        {**VALID_SPEC, "sources": [{"uploadId": UPLOAD_ID}] * 1001},
        "spec.sources",
        "at most 1000 items",
        id="1001-sources",
    ),
    pytest.param(src(url="https://e.com/a.jpg", uploadId=UPLOAD_ID), "spec.sources[0]", ONE_OF, id="both"),
    pytest.param(
        {**VALID_SPEC, "sources": [{"url": "https://e.com/a"}, {}]}, "spec.sources[1]", ONE_OF, id="neither"
    ),
    pytest.param(src(url="ftp://example.com/a.jpg"), URL0, MATCH, id="ftp-url"),
    pytest.param(src(url="example.com/a.jpg"), URL0, MATCH, id="schemeless-url"),
    pytest.param(src(url="https:///a.jpg"), URL0, MATCH, id="hostless-url"),
    pytest.param(src(url="https://example.com/a cat.jpg"), URL0, MATCH, id="url-with-space"),
    pytest.param(src(url="https://user:pw@example.com/a.jpg"), URL0, MATCH, id="url-with-password"),
    pytest.param(src(uploadId="cat.jpg"), "spec.sources[0].uploadId", MATCH, id="uploadId-not-uuid"),
    pytest.param(
        src(uploadId=UPLOAD_ID.upper()), "spec.sources[0].uploadId", MATCH, id="uploadId-upper-case"
    ),
    pytest.param(thumb(width=0), f"{THUMB}.width", "greater than or equal to 1", id="width-0"),
    pytest.param(thumb(height=4097), f"{THUMB}.height", "less than or equal to 4096", id="height-4097"),
    pytest.param(thumb(width="100"), f"{THUMB}.width", "must be of type integer", id="width-string"),
    pytest.param(thumb(fit="blah"), f"{THUMB}.fit", 'Unsupported value: "blah"', id="fit-blah"),
    pytest.param(thumb(format="bmp"), f"{THUMB}.format", 'Unsupported value: "bmp"', id="format-bmp"),
    pytest.param(thumb(widht=10), f"{THUMB}.widht", "unknown field", id="misspelt-field"),
    pytest.param(
        {**VALID_SPEC, "ttlSecondsAfterFinished": -1},
        "spec.ttlSecondsAfterFinished",
        "greater than or equal to 0",
        id="negative-ttl",
    ),
]


@pytest.mark.parametrize(("spec", "field", "words"), INVALID)
def test_the_api_server_refuses_an_invalid_imagejob(
    kube: Kube, spec: dict[str, Any] | None, field: str, words: str
) -> None:
    # In "default": nothing is created, unless validation is broken, and then it is deleted again.
    proc = kube.kubectl("create", "-n", "default", "-f", "-", input=manifest("invalid", spec), check=False)
    if proc.returncode == 0:
        kube.kubectl("delete", "imagejob", "invalid", "-n", "default", "--wait=false")
        pytest.fail(f"the API server accepted {spec}")
    assert f"{field}:" in proc.stderr or f'"{field}"' in proc.stderr, proc.stderr
    assert words in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com",
        "http://example.com/cat.jpg",
        "https://images.example.co.uk:8443/a/b/c.webp?size=large&v=2#top",
        "http://127.0.0.1:9000/bucket/cat%20photo.png",
        "https://[::1]:8080/cat.jpg",
        "https://EXAMPLE.com/Cat.JPG",
    ],
)
def test_reasonable_urls_are_accepted(kube: Kube, url: str) -> None:
    kube.kubectl("create", "-n", "default", "--dry-run=server", "-f", "-", input=manifest("ok", src(url=url)))


def test_a_full_batch_is_accepted(kube: Kube) -> None:
    spec = {
        "userId": "u" * 128,
        "sources": [{"url": f"https://example.com/{i}.jpg"} for i in range(999)] + [{"uploadId": UPLOAD_ID}],
        "operations": {"thumbnail": {"width": 4096, "height": 1, "fit": "inside", "format": "webp"}},
        "ttlSecondsAfterFinished": 0,
    }
    kube.kubectl("create", "-n", "default", "--dry-run=server", "-f", "-", input=manifest("full", spec))


def test_spec_is_immutable_but_metadata_and_status_are_not(kube: Kube, namespace: str) -> None:
    create(kube, namespace, "once", VALID_SPEC)

    for patch in (
        {"spec": {"userId": "someone-else"}},
        {"spec": {"operations": {"thumbnail": {"width": 200}}}},
        {"spec": {"ttlSecondsAfterFinished": 60}},
        {"spec": {"sources": [{"url": "https://example.com/other.jpg"}]}},
    ):
        proc = kube.kubectl(
            "patch", "ij", "once", "-n", namespace, "--type=merge", "-p", json.dumps(patch), check=False
        )
        assert proc.returncode != 0, patch
        assert "spec: Invalid value" in proc.stderr, proc.stderr
        assert "spec is immutable" in proc.stderr, proc.stderr

    # Re-applying the same spec is no change, and metadata (labels, finalizers) may change.
    job = kube.kubectl_json("get", "ij", "once", "-n", namespace)
    same = copy.deepcopy(job)
    same["metadata"]["labels"] = {"team": "cats"}
    same["metadata"]["finalizers"] = ["imgflow.io/test"]
    kube.kubectl("replace", "-f", "-", input=json.dumps(same))
    kube.kubectl(
        "patch", "ij", "once", "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}'
    )

    set_status(
        kube,
        namespace,
        "once",
        {"phase": "Succeeded", "total": 2, "succeeded": 2, "failed": 0, "progress": "2/2"},
    )
    assert kube.kubectl_json("get", "ij", "once", "-n", namespace)["status"]["phase"] == "Succeeded"


def test_status_is_written_through_its_subresource_and_validated(kube: Kube, namespace: str) -> None:
    create(kube, namespace, "st", VALID_SPEC)

    # Through the main resource, status is ignored.
    kube.kubectl("patch", "ij", "st", "-n", namespace, "--type=merge", "-p", '{"status":{"phase":"Failed"}}')
    assert "status" not in kube.kubectl_json("get", "ij", "st", "-n", namespace)

    status = {
        "phase": "Failed",
        "total": 2,
        "succeeded": 1,
        "failed": 1,
        "progress": "1/2",
        "startedAt": "2026-01-02T03:04:05Z",
        "finishedAt": "2026-01-02T03:04:09Z",
        "observedGeneration": 1,
        "conditions": [
            {
                "type": "Failed",
                "status": "True",
                "reason": "SourcesFailed",
                "message": "1 of 2 sources failed",
                "lastTransitionTime": "2026-01-02T03:04:09Z",
                "observedGeneration": 1,
            }
        ],
        "sources": [
            {"index": 0, "source": "https://example.com/cat.jpg", "jobId": UPLOAD_ID, "status": "completed"},
            {
                "index": 1,
                "source": UPLOAD_ID,
                "jobId": UPLOAD_ID,
                "status": "failed",
                "error": "not an image",
            },
        ],
    }
    set_status(kube, namespace, "st", status)
    assert kube.kubectl_json("get", "ij", "st", "-n", namespace)["status"] == status

    for bad, field in (
        ({"phase": "Done"}, "status.phase"),
        ({"failed": -1}, "status.failed"),
        ({"sources": [{"index": 0, "status": "lost"}]}, "status.sources[0].status"),
        ({"conditions": [{"type": "Complete", "status": "Maybe"}]}, "status.conditions[0].status"),
    ):
        patch = json.dumps({"status": bad})
        args = ("patch", "ij", "st", "-n", namespace, "--subresource=status", "--type=merge", "-p", patch)
        proc = kube.kubectl(*args, check=False)
        assert proc.returncode != 0, bad
        assert field in proc.stderr, proc.stderr
