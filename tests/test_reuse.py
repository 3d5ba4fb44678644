"""Identical work made once (issue 25): within a tenant, an upload whose bytes and options match
a finished, unexpired job completes at once from that job's outputs, without a worker; and those
outputs stay while a job uses them."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import time
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from imgflow.core.settings import Settings, StorageBackend
from imgflow.harness import images
from imgflow.harness.client import JOBS, api_client, make_key, submit, wait_finished
from imgflow.harness.receivers import receiver
from tests.conftest import Processes
from tests.test_cli import environment, imgflow

SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()
READ, WRITE = "jobs:read", "jobs:write"


@pytest.fixture
def settings(fresh_settings: Settings, tmp_path: Path) -> Settings:
    return fresh_settings.model_copy(
        update={
            "storage_backend": StorageBackend.local,
            "storage_dir": tmp_path / "files",
            "allow_private_urls": True,  # the webhook receiver is on loopback
            "webhook_secret": SECRET,
            "reuse_disabled_tenants": "careful",
        }
    )


async def test_an_identical_upload_completes_at_once_from_the_first_jobs_outputs(
    processes: Processes, settings: Settings
) -> None:
    _, base = processes.start_api(settings)
    processes.start_worker(settings)
    photo = images.jpeg(320, 240)
    async with api_client(base, timeout=30) as admin:
        keys = {t: await make_key(admin, t, READ, WRITE) for t in ("acme", "other", "careful")}
    async with (
        api_client(base, key=keys["acme"], timeout=30) as acme,
        api_client(base, key=keys["other"], timeout=30) as other,
        api_client(base, key=keys["careful"], timeout=30) as careful,
    ):
        first_id = (await submit(acme, photo, width="64", height="48")).json()["jobId"]
        first = await wait_finished(acme, first_id)
        assert first["status"] == "completed" and "reusedFrom" not in first["result"]

        secret = (await acme.post("/api/webhooks/secret")).json()["secret"]
        with receiver() as hook:
            answer = await submit(acme, photo, width="64", height="48", callbackUrl=hook.url)
            assert answer.status_code == 202, answer.text
            assert answer.json()["status"] == "completed"  # at once: no worker needed
            twin_id = answer.json()["jobId"]
            twin = (await acme.get(f"{JOBS}/{twin_id}")).json()
            deadline = time.monotonic() + 30
            while not hook.calls:
                assert time.monotonic() < deadline, "no webhook for the reused job"
                await asyncio.sleep(0.05)
        assert twin_id != first_id
        assert twin["status"] == "completed" and twin["attempts"] == 0
        assert twin["result"]["reusedFrom"] == first_id
        assert twin["result"]["thumbnailUrl"] == first["result"]["thumbnailUrl"]
        assert (twin["result"]["width"], twin["result"]["height"]) == (64, 48)
        thumbnail = await acme.get(twin["result"]["thumbnailUrl"])
        assert thumbnail.status_code == 200 and thumbnail.content[:2] == b"\xff\xd8"
        # followers and webhooks see it as any completed job
        events = await acme.get(f"{JOBS}/{twin_id}/events")
        assert '"status":"completed"' in events.text.replace(" ", "")
        payload = Webhook(secret).verify(hook.calls[0][1], hook.calls[0][0])
        assert payload["type"] == "job.completed" and payload["data"]["jobId"] == twin_id
        assert payload["data"]["result"]["reusedFrom"] == first_id

        # an Idempotency-Key still answers its first job again; a new key gets a job of its own
        form = {"userId": "user-1", "width": "64", "height": "48"}
        keyed = [
            await acme.post(
                JOBS,
                files={"file": ("a.jpg", photo, "image/jpeg")},
                data=form,
                headers={"Idempotency-Key": key},
            )
            for key in ("retry-1", "retry-1", "retry-2")
        ]
        ids = [k.json()["jobId"] for k in keyed]
        assert ids[0] == ids[1] != ids[2] and twin_id not in ids
        assert [k.json()["status"] for k in keyed] == ["completed"] * 3

        # decoded again: other options, reuse=false, another tenant, a tenant that opted out
        again = [
            await submit(acme, photo, width="65", height="48"),
            await submit(acme, photo, width="64", height="48", reuse="false"),
            await submit(other, photo, width="64", height="48"),
        ]
        assert [a.json()["status"] for a in again] == ["pending"] * 3
        for client, answer in zip((acme, acme, other), again, strict=True):
            made = await wait_finished(client, answer.json()["jobId"])
            assert made["status"] == "completed" and "reusedFrom" not in made["result"]
        for _ in range(2):
            answer = await submit(careful, photo, width="64", height="48")
            assert answer.json()["status"] == "pending"
            assert "reusedFrom" not in (await wait_finished(careful, answer.json()["jobId"]))["result"]

        refused = await submit(acme, photo, reuse="maybe")
        assert refused.status_code == 422
        assert [e["field"] for e in refused.json()["errors"]] == ["reuse"]

        metrics = (await acme.get("/metrics")).text
    assert re.search(r"^imgflow_jobs_reused_total 3\.0$", metrics, re.M)
    assert re.search(r"^imgflow_jobs_submitted_total 9\.0$", metrics, re.M)


async def test_shared_outputs_stay_after_the_job_that_made_them_expires(
    processes: Processes, settings: Settings
) -> None:
    """The first job expires (its record goes from clients' view) while the job that reused its
    outputs has not: the files stay and the second job still serves them."""
    # the worker's jobs expire in seconds; the one the API completes from them, in an hour
    _, base = processes.start_api(
        settings.model_copy(update={"retention_s": 3600.0, "reconcile_interval_s": 0.25})
    )
    processes.start_worker(settings.model_copy(update={"retention_s": 10.0}))
    photo = images.jpeg(320, 240)
    files = settings.storage_dir
    async with api_client(base, timeout=30) as client:
        first_id = (await submit(client, photo)).json()["jobId"]
        first = await wait_finished(client, first_id)
        answer = (await submit(client, photo)).json()
        assert answer["status"] == "completed"
        twin = (await client.get(f"{JOBS}/{answer['jobId']}")).json()
        assert twin["result"]["reusedFrom"] == first_id
        shared = twin["result"]["thumbnailUrl"]
        made = (await client.get(shared)).content

        # a job made after the first expires after it: once the sweep has deleted its files, it
        # has passed the first job by
        later_id = (await submit(client, photo, width="50")).json()["jobId"]
        later = await wait_finished(client, later_id)
        later_file = later["result"]["thumbnailUrl"].rsplit("/", 1)[1]
        deadline = time.monotonic() + 60
        while (files / later_file).exists():
            assert time.monotonic() < deadline, "the sweep did not delete the later job's files"
            await asyncio.sleep(0.1)
        assert (await client.get(f"{JOBS}/{first_id}")).status_code == 404  # expired

        assert (files / shared.rsplit("/", 1)[1]).exists()
        still = await client.get(shared)
        assert still.status_code == 200 and still.content == made
        assert (await client.get(f"{JOBS}/{answer['jobId']}")).json()["status"] == "completed"
    assert first["result"]["thumbnailUrl"] == shared


async def test_the_cli_reuses_unless_told_not_to(
    processes: Processes, settings: Settings, tmp_path: Path
) -> None:
    _, base = processes.start_api(settings)
    processes.start_worker(settings)
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(images.jpeg(320, 240))
    async with api_client(base, timeout=30) as admin:
        key = await make_key(admin, "acme", READ, WRITE)
    env = environment(base, key, tmp_path)
    async with api_client(base, key=key, timeout=30) as client:
        first_id = (await submit(client, photo.read_bytes(), user_id="cli-user")).json()["jobId"]
        await wait_finished(client, first_id)

        sent = await imgflow(env, "-o", "json", "submit", photo, "--no-reuse", "--wait")
        assert sent.returncode == 0, sent.stderr
        [made] = json.loads(sent.stdout)["jobs"]
        assert "reusedFrom" not in (await client.get(f"{JOBS}/{made['jobId']}")).json()["result"]

        sent = await imgflow(env, "-o", "json", "submit", photo, "--wait")
        assert sent.returncode == 0, sent.stderr
        [reused] = json.loads(sent.stdout)["jobs"]
        assert reused["status"] == "completed"
        job = (await client.get(f"{JOBS}/{reused['jobId']}")).json()
        assert job["result"]["reusedFrom"] in (first_id, made["jobId"])
