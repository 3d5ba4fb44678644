"""The HTTP contract of the original design (README, "HTTP API") and its extensions, against a
running API and worker on real Redis and MongoDB-wire servers."""

from __future__ import annotations

import base64
import re
import uuid
from datetime import datetime

import pytest
import pyvips

from imgflow.harness import images
from imgflow.harness.client import JOBS, submit, wait_finished
from tests.conftest import Stack

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:8]}"


async def test_create_answers_202_pending_with_location(stack: Stack) -> None:
    response = await submit(stack.client, images.jpeg(), user_id=new_user())
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"jobId", "status", "createdAt"}
    assert uuid.UUID(body["jobId"]).version == 4
    assert body["status"] == "pending"
    assert ISO_Z.match(body["createdAt"])
    assert response.headers["location"] == f"{JOBS}/{body['jobId']}"


async def test_job_completes_with_a_servable_thumbnail(stack: Stack) -> None:
    user = new_user()
    job_id = (await submit(stack.client, images.jpeg(800, 600), user_id=user)).json()["jobId"]
    job = await wait_finished(stack.client, job_id)
    assert job["status"] == "completed", job
    assert job["jobId"] == job_id and job["userId"] == user
    result = job["result"]
    assert result["thumbnailUrl"] == f"/uploads/thumbnail-{job_id}.jpg"
    assert ISO_Z.match(result["processedAt"]) and ISO_Z.match(job["updatedAt"])
    assert (result["width"], result["height"], result["format"]) == (100, 100, "jpeg")
    assert "error" not in job

    thumb = await stack.client.get(result["thumbnailUrl"])
    assert thumb.status_code == 200
    assert thumb.headers["content-type"] == "image/jpeg"
    assert thumb.headers["x-content-type-options"] == "nosniff"
    assert int(thumb.headers["content-length"]) == len(thumb.content) == result["bytes"]
    assert "max-age" in thumb.headers["cache-control"]
    image = pyvips.Image.new_from_buffer(thumb.content, "")
    assert (image.width, image.height) == (100, 100)

    again = await stack.client.get(result["thumbnailUrl"], headers={"If-None-Match": thumb.headers["etag"]})
    assert again.status_code == 304 and not again.content


@pytest.mark.parametrize("kind", sorted(images.VALID))
async def test_every_accepted_kind_completes_end_to_end(stack: Stack, kind: str) -> None:
    make, _ = images.VALID[kind]
    # The name and Content-Type lie on purpose: the format is read from the bytes.
    response = await submit(stack.client, make(), filename="upload.bin", content_type="text/plain")
    assert response.status_code == 202, response.text
    job = await wait_finished(stack.client, response.json()["jobId"])
    assert job["status"] == "completed", job
    # the contract's thumbnail is 100x100, also of a smaller source
    assert (job["result"]["width"], job["result"]["height"]) == (100, 100)


async def test_size_fit_and_format_can_be_chosen_per_job(stack: Stack) -> None:
    response = await submit(
        stack.client, images.png_alpha(), width="64", height="32", fit="inside", format="png"
    )
    job = await wait_finished(stack.client, response.json()["jobId"])
    assert job["options"] == {
        "width": 64,
        "height": 32,
        "fit": "inside",
        "format": "png",
        "gravity": "centre",
    }
    assert job["result"]["thumbnailUrl"].endswith(".png") and job["result"]["format"] == "png"
    assert (job["result"]["width"], job["result"]["height"]) == (43, 32)
    thumb = await stack.client.get(job["result"]["thumbnailUrl"])
    assert thumb.headers["content-type"] == "image/png"
    assert pyvips.Image.new_from_buffer(thumb.content, "").hasalpha()


async def test_a_truncated_jpeg_ends_failed_with_a_readable_error(stack: Stack) -> None:
    response = await submit(stack.client, images.truncated_jpeg())
    assert response.status_code == 202  # the header is sound; the damage shows when decoding
    job = await wait_finished(stack.client, response.json()["jobId"])
    assert job["status"] == "failed"
    assert job["error"].startswith("The image could not be decoded")
    assert "result" not in job


async def test_unknown_job_is_404_problem(stack: Stack) -> None:
    response = await stack.client.get(f"{JOBS}/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["status"] == 404 and problem["title"] == "Job not found" and "no job" in problem["detail"]


async def test_user_listing_is_newest_first_filtered_and_paged(stack: Stack) -> None:
    user = new_user()
    ids = []
    for _ in range(5):
        ids.append((await submit(stack.client, images.jpeg(120, 90), user_id=user)).json()["jobId"])
    bad = (await submit(stack.client, images.truncated_jpeg(), user_id=user)).json()["jobId"]
    for job_id in [*ids, bad]:
        await wait_finished(stack.client, job_id)

    url = f"/api/image-processing/users/{user}/jobs"
    everything = (await stack.client.get(url)).json()
    listed = [job["jobId"] for job in everything["jobs"]]
    assert listed == [bad, *reversed(ids)]
    created = [datetime.fromisoformat(job["createdAt"]) for job in everything["jobs"]]
    assert created == sorted(created, reverse=True)
    assert "nextCursor" not in everything
    assert all(job["result"]["thumbnailUrl"].startswith("/uploads/") for job in everything["jobs"][1:])

    failed = (await stack.client.get(url, params={"status": "failed"})).json()["jobs"]
    assert [job["jobId"] for job in failed] == [bad]
    completed = (await stack.client.get(url, params={"status": "completed"})).json()["jobs"]
    assert [job["jobId"] for job in completed] == list(reversed(ids))

    pages, cursor = [], None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await stack.client.get(url, params=params)).json()
        pages.append([job["jobId"] for job in page["jobs"]])
        cursor = page.get("nextCursor")
        if cursor is None:
            break
    assert pages == [listed[0:2], listed[2:4], listed[4:6]]

    # The original's numbered pages still work.
    page2 = (await stack.client.get(url, params={"page": "2", "limit": "2"})).json()
    assert [job["jobId"] for job in page2["jobs"]] == listed[2:4]
    beyond = (await stack.client.get(url, params={"page": "9", "limit": "2"})).json()
    assert beyond["jobs"] == []

    unknown = (await stack.client.get(f"/api/image-processing/users/{new_user()}/jobs")).json()
    assert unknown == {"jobs": []}


async def test_listing_refuses_bad_parameters(stack: Stack) -> None:
    url = f"/api/image-processing/users/{new_user()}/jobs"
    for params, status in [
        ({"status": "done"}, 422),
        ({"limit": "0"}, 422),
        ({"limit": "1000"}, 422),
        ({"cursor": "not-a-cursor"}, 400),
        # deeply nested JSON, base64-encoded: once a RecursionError and a 500
        ({"cursor": base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).decode()}, 400),
        ({"cursor": base64.urlsafe_b64encode(b"[" * 100 + b"]" * 100).decode()}, 400),
    ]:
        response = await stack.client.get(url, params=params)
        assert response.status_code == status, (params, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["detail"]


async def test_operations_endpoints(stack: Stack) -> None:
    assert (await stack.client.get("/healthz")).json() == {"status": "ok"}
    ready = await stack.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"mongodb": "ok", "redis": "ok", "storage": "ok"}}

    await submit(stack.client, images.jpeg(64, 64))
    metrics = (await stack.client.get("/metrics")).text
    assert re.search(r"^imgflow_jobs_submitted_total [1-9]", metrics, re.M)
    assert 'http_requests_total{method="POST",route="/api/image-processing/jobs",status="202"}' in metrics
    assert 'http_request_duration_seconds_bucket{le="0.1",method="POST"' in metrics

    spec = (await stack.client.get("/openapi.json")).json()
    assert {f"{JOBS}", f"{JOBS}/{{job_id}}", "/api/image-processing/users/{user_id}/jobs"} <= set(
        spec["paths"]
    )
    listing = spec["paths"]["/api/image-processing/users/{user_id}/jobs"]["get"]
    assert "cursor" in listing["description"].lower()
    assert (await stack.client.get("/docs")).status_code == 200


async def test_thumbnail_paths_outside_our_names_are_404(stack: Stack) -> None:
    for path in (
        "/uploads/original-x",
        "/uploads/..%2Fetc%2Fpasswd",
        f"/uploads/thumbnail-{uuid.uuid4()}.jpg",
    ):
        response = await stack.client.get(path)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"
