"""Completion webhooks, checked the way a receiver would: real HTTP receivers on loopback, every
signature verified with the official ``standardwebhooks`` package."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from imgflow.core.settings import Settings
from imgflow.harness import images
from imgflow.harness.client import JOBS, api_client, make_key, submit, wait_finished
from imgflow.harness.receivers import Receiver, receiver
from tests.conftest import Processes

SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()


@pytest.fixture
def settings(fresh_settings: Settings) -> Settings:
    return fresh_settings.model_copy(
        update={
            "allow_private_urls": True,  # the receivers are on loopback
            "webhook_secret": SECRET,
            "webhook_retry_delays_s": "0.3,0.5",
            "webhook_timeout_s": 1.0,
        }
    )


@pytest.fixture
def api(processes: Processes, settings: Settings) -> str:
    _, base = processes.start_api(settings)
    processes.start_worker(settings)
    return base


def wait_calls(hook: Receiver, count: int, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while len(hook.calls) < count:
        assert time.monotonic() < deadline, f"{len(hook.calls)} calls, expected {count}"
        time.sleep(0.05)


async def deliveries(client: httpx.AsyncClient, job_id: str, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        found: list[dict[str, Any]] = (await client.get(f"{JOBS}/{job_id}/deliveries")).json()["deliveries"]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


async def test_a_receiver_failing_twice_gets_the_signed_event_on_the_third_try(api: str) -> None:
    with receiver(fail_first=2) as hook:
        async with api_client(api, timeout=30) as client:
            secret = (await client.post("/api/webhooks/secret")).json()["secret"]  # the tenant's own
            response = await submit(client, images.jpeg(), callbackUrl=hook.url)
            assert response.status_code == 202, response.text
            job_id = response.json()["jobId"]
            assert (await wait_finished(client, job_id))["status"] == "completed"
            wait_calls(hook, 3)
            attempts = await deliveries(client, job_id, 3)
    verifier = Webhook(secret)
    payloads = [verifier.verify(body, headers) for headers, body in hook.calls]
    assert {p["type"] for p in payloads} == {"job.completed"}
    assert {p["data"]["jobId"] for p in payloads} == {job_id}
    assert payloads[-1]["data"]["status"] == "completed" and payloads[-1]["data"]["result"]["thumbnailUrl"]
    assert len({headers["webhook-id"] for headers, _ in hook.calls}) == 1  # one event, three tries
    assert [(a["attempt"], a["status"], a["delivered"]) for a in attempts] == [
        (1, 500, False),
        (2, 500, False),
        (3, 204, True),
    ]
    with pytest.raises(Exception, match=r"(?i)signature"):
        Webhook("whsec_" + base64.b64encode(b"another secret, not ours").decode()).verify(
            *hook.calls[0][::-1]
        )


async def test_a_receiver_that_never_answers_is_given_up_after_the_schedule(api: str) -> None:
    with receiver(silent=True) as hook:
        async with api_client(api, timeout=30) as client:
            response = await submit(client, images.jpeg(), callbackUrl=hook.url)
            job_id = response.json()["jobId"]
            await wait_finished(client, job_id)
            attempts = await deliveries(client, job_id, 3)
            await asyncio.sleep(1.5)  # long enough for a fourth try, if there were one
            assert len((await client.get(f"{JOBS}/{job_id}/deliveries")).json()["deliveries"]) == 3
    assert [a["delivered"] for a in attempts] == [False, False, False]
    assert all("did not answer" in a["error"] for a in attempts)


async def test_callback_urls_are_checked_at_the_door(processes: Processes, fresh_settings: Settings) -> None:
    _, guarded = processes.start_api(fresh_settings.model_copy(update={"webhook_secret": SECRET}))
    _, unsigned = processes.start_api(fresh_settings)
    async with api_client(timeout=30) as client:
        client.base_url = httpx.URL(guarded)
        private = await submit(client, images.jpeg(), callbackUrl="http://127.0.0.1:9/hook")
        scheme = await submit(client, images.jpeg(), callbackUrl="file:///etc/passwd")
        client.base_url = httpx.URL(unsigned)
        no_secret = await submit(client, images.jpeg(), callbackUrl="https://example.com/hook")
    for response, phrase in (
        (private, "loopback"),
        (scheme, "only http"),
        (no_secret, "IMGFLOW_WEBHOOK_SECRET"),
    ):
        assert response.status_code == 422, response.text
        assert phrase in response.json()["detail"], response.json()


async def test_a_job_waits_for_its_webhook_before_it_expires(
    processes: Processes, settings: Settings
) -> None:
    settings = settings.model_copy(update={"retention_s": 0.5, "reconcile_interval_s": 0.25})
    _, base = processes.start_api(settings)
    processes.start_worker(settings)
    with receiver(silent=True) as hook:
        async with api_client(base, timeout=30) as client:
            job_id = (await submit(client, images.jpeg(), callbackUrl=hook.url)).json()["jobId"]
            # three tries over ~3.5 s, all describing the job, although it expired after 0.5 s: it is
            # still there while a try is due (read before the last: after it, it may go at once)
            wait_calls(hook, 2)
            attempts = await deliveries(client, job_id, 2)
            assert len(attempts) == 2
            wait_calls(hook, 3)
            async with asyncio.timeout(30):  # then it goes
                while (await client.get(f"{JOBS}/{job_id}/deliveries")).status_code != 404:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)


async def test_a_tenants_endpoints_get_its_events_signed_with_their_own_secrets(api: str) -> None:
    with receiver() as completed_only, receiver() as everything, receiver() as elsewhere:
        async with api_client(api, timeout=30) as admin:
            acme_key = await make_key(admin, "acme", "jobs:read", "jobs:write")
            globex_key = await make_key(admin, "globex", "jobs:read", "jobs:write")
        async with (
            api_client(api, key=acme_key, timeout=30) as acme,
            api_client(api, key=globex_key) as globex,
        ):
            first = await acme.post(
                "/api/webhooks", json={"url": completed_only.url, "events": ["job.completed"]}
            )
            second = await acme.post("/api/webhooks", json={"url": everything.url})
            theirs = await globex.post("/api/webhooks", json={"url": elsewhere.url})
            assert first.status_code == second.status_code == theirs.status_code == 201, first.text
            secrets = {
                hook.url: made.json()["secret"]
                for hook, made in ((completed_only, first), (everything, second))
            }
            assert all(s.startswith("whsec_") for s in secrets.values())
            listed = await acme.get("/api/webhooks")
            assert {e["id"] for e in listed.json()["endpoints"]} == {first.json()["id"], second.json()["id"]}
            assert not any(s in listed.text for s in secrets.values()) and '"secret"' not in listed.text
            assert (await acme.post("/api/webhooks", json={"url": "file:///etc/passwd"})).status_code == 422

            photo = images.jpeg()
            good = (await submit(acme, photo)).json()["jobId"]
            bad = (await submit(acme, photo[: len(photo) // 2])).json()["jobId"]  # fails in the worker
            assert (await wait_finished(acme, good))["status"] == "completed"
            assert (await wait_finished(acme, bad))["status"] == "failed"
            wait_calls(everything, 2)
            wait_calls(completed_only, 1)
            for hook in (completed_only, everything):
                for headers, body in hook.calls:  # each verifies with its own endpoint's secret
                    Webhook(secrets[hook.url]).verify(body, headers)
            assert [
                Webhook(secrets[completed_only.url]).verify(b, h)["data"]["jobId"]
                for h, b in completed_only.calls
            ] == [good]
            events = {Webhook(secrets[everything.url]).verify(b, h)["type"] for h, b in everything.calls}
            assert events == {"job.completed", "job.failed"}
            attempts = await deliveries(acme, good, 2)
            assert {a["target"] for a in attempts} == {first.json()["id"], second.json()["id"]}
            assert all(a["delivered"] for a in attempts)
            assert elsewhere.calls == []  # another tenant's endpoint hears nothing of acme's jobs

            # deleting: only by its tenant; then it gets nothing more
            assert (await globex.delete(f"/api/webhooks/{first.json()['id']}")).status_code == 404
            assert (await acme.delete(f"/api/webhooks/{first.json()['id']}")).status_code == 204
            later = (await submit(acme, photo)).json()["jobId"]
            await wait_finished(acme, later)
            wait_calls(everything, 3)
            await deliveries(acme, later, 1)
            assert len(completed_only.calls) == 1
