"""The OpenAPI description is good enough to generate a client from: a client generated with
openapi-python-client from the running API's /openapi.json drives one job end to end."""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from imgflow.core.options import OPTION_FIELDS
from imgflow.core.outputs import OutputFormat
from imgflow.harness import images
from imgflow.harness.client import make_key
from tests.conftest import Stack

# openapi-python-client reads only JSON and octet-stream bodies; thumbnails are binary
CONFIG = """content_type_overrides:
  image/jpeg: application/octet-stream
  image/png: application/octet-stream
  image/webp: application/octet-stream
  image/avif: application/octet-stream
"""
OPERATIONS = {
    "createJob",
    "getJob",
    "listUserJobs",
    "getThumbnail",
    "followJob",
    "listJobDeliveries",
    "listDeadLetters",
    "retryDeadLetter",
    "createApiKey",
    "listApiKeys",
    "revokeApiKey",
    "createWebhookEndpoint",
    "listWebhookEndpoints",
    "deleteWebhookEndpoint",
}


async def test_every_operation_is_named_tagged_secured_and_its_errors_are_problem_details(
    stack: Stack,
) -> None:
    spec = (await stack.client.get("/openapi.json")).json()
    named = {}
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            named[op["operationId"]] = (method, path)
            assert op.get("tags"), (method, path)
            if path.startswith(("/api/", "/uploads/")):
                assert op["security"] == [{"apiKey": []}], (method, path)
                assert {"401", "403"} <= set(op["responses"]), (method, path)
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")):
                    assert list(response["content"]) == ["application/problem+json"], (method, path, status)
                    assert response["content"]["application/problem+json"]["schema"] == {
                        "$ref": "#/components/schemas/ProblemDetails"
                    }
    assert set(named) >= OPERATIONS
    assert set(named["createJob"][1:]) == {"/api/image-processing/jobs"}
    create = spec["paths"]["/api/image-processing/jobs"]["post"]
    assert {"400", "401", "403", "409", "413", "415", "422", "429", "503"} <= set(create["responses"])
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert {"type", "title", "status", "detail"} <= set(schemas["ProblemDetails"]["properties"])
    assert spec["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"


def generate_client(spec: bytes, where: Path) -> Any:
    (where / "openapi.json").write_bytes(spec)
    (where / "config.yaml").write_text(CONFIG)
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        [
            str(bin_dir / "openapi-python-client"),
            "generate",
            "--path",
            "openapi.json",
            "--meta",
            "none",
            "--output-path",
            "imgflow_client",
            "--config",
            "config.yaml",
        ],
        cwd=where,
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stdout, result.stdout  # nothing of the API left out
    sys.path.insert(0, str(where))
    try:
        return importlib.import_module("imgflow_client")
    finally:
        sys.path.remove(str(where))


async def test_every_job_option_is_in_the_schema_with_an_example(stack: Stack) -> None:
    spec = (await stack.client.get("/openapi.json")).json()
    form = spec["paths"]["/api/image-processing/jobs"]["post"]["requestBody"]["content"][
        "multipart/form-data"
    ]
    properties = form["schema"]["properties"]
    options = set(OPTION_FIELDS) | {"variants", "preset", "userId", "callbackUrl"}
    assert options <= set(properties), options - set(properties)
    for name in options:
        assert "example" in properties[name], name
    assert set(properties["format"]["enum"]) == {*(f.value for f in OutputFormat), "auto"}
    assert "listPresets" in {op["operationId"] for ops in spec["paths"].values() for op in ops.values()}


async def test_a_generated_client_drives_one_job(stack: Stack, tmp_path: Path) -> None:
    spec = (await stack.client.get("/openapi.json")).content
    client_pkg = generate_client(spec, tmp_path)
    create_job = importlib.import_module("imgflow_client.api.jobs.create_job")
    get_job = importlib.import_module("imgflow_client.api.jobs.get_job")
    list_user_jobs = importlib.import_module("imgflow_client.api.jobs.list_user_jobs")
    get_thumbnail = importlib.import_module("imgflow_client.api.jobs.get_thumbnail")
    models = importlib.import_module("imgflow_client.models")
    types = importlib.import_module("imgflow_client.types")

    key = await make_key(stack.client, "generated", "jobs:read", "jobs:write")
    client = client_pkg.AuthenticatedClient(base_url=stack.base_url, token=key)
    body = models.CreateJobBody(
        file=types.File(payload=images.jpeg(800, 600), file_name="photo.jpg"),
        user_id="generated-client",
        width=120,
        height=90,
        format_=models.CreateJobBodyFormat.WEBP,
    )
    accepted = await create_job.asyncio(client=client, body=body, idempotency_key="gen-1")
    assert isinstance(accepted, models.Accepted), accepted
    deadline = time.monotonic() + 90
    while True:
        job = await get_job.asyncio(accepted.job_id, client=client)
        assert isinstance(job, models.JobView), job
        if job.status.value in ("completed", "failed") or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)
    assert job.status.value == "completed", job
    assert (job.result.width, job.result.height, job.result.format_.value) == (120, 90, "webp")
    name = job.result.thumbnail_url.rsplit("/", 1)[1]
    thumbnail = await get_thumbnail.asyncio(name, client=client)
    assert thumbnail.payload.read()[8:12] == b"WEBP"
    listed = await list_user_jobs.asyncio("generated-client", client=client)
    assert [j.job_id for j in listed.jobs] == [accepted.job_id]
    # errors come back typed, as problem details
    missing = await get_job.asyncio("no-such-job", client=client)
    assert isinstance(missing, models.ProblemDetails) and missing.status == 404
    anonymous = client_pkg.Client(base_url=stack.base_url)
    refused = await get_job.asyncio_detailed(accepted.job_id, client=anonymous)
    assert refused.status_code == 401 and isinstance(refused.parsed, models.ProblemDetails)
