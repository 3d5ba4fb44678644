"""Webhooks kept apart per tenant: one tenant's receivers that never answer do not hold another
tenant's deliveries, an endpoint failing again and again is disabled (and announced to its tenant's
other endpoints), two API replicas send each delivery once, a job's callbackUrl is signed with its
tenant's own secret, and the endpoint cap holds under racing registrations. Real stack, real
receivers on loopback."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook

from imgflow.core.settings import Settings
from imgflow.harness import images
from imgflow.harness.client import JOBS, api_client, make_key, submit, wait_finished
from imgflow.harness.receivers import Receiver, receiver, tarpit
from tests.conftest import Processes
from tests.test_webhooks import wait_calls

SERVICE_SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()
ENDPOINTS_CAP = 20


@pytest.fixture
def settings(fresh_settings: Settings) -> Settings:
    return fresh_settings.model_copy(
        update={
            "allow_private_urls": True,  # the receivers are on loopback
            "webhook_secret": SERVICE_SECRET,
            "webhook_retry_delays_s": "0.3,0.5",
            "webhook_timeout_s": 30.0,
        }
    )


async def tenant_clients(base: str, *tenants: str) -> list[str]:
    async with api_client(base, timeout=30) as admin:
        return [await make_key(admin, tenant, "jobs:read", "jobs:write") for tenant in tenants]


async def finished_job(client: httpx.AsyncClient, **fields: str) -> str:
    response = await submit(client, images.jpeg(), **fields)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["jobId"]
    await wait_finished(client, job_id)
    return job_id


async def attempts_of(client: httpx.AsyncClient, job_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = (await client.get(f"{JOBS}/{job_id}/deliveries")).json()["deliveries"]
    return found


async def test_a_tenants_tarpit_endpoints_do_not_hold_another_tenants_delivery(
    processes: Processes, settings: Settings
) -> None:
    _, base = processes.start_api(settings)
    processes.start_worker(settings)
    acme_key, globex_key = await tenant_clients(base, "acme", "globex")
    with tarpit() as pit, receiver() as victim:
        async with (
            api_client(base, key=acme_key, timeout=30) as acme,
            api_client(base, key=globex_key) as globex,
        ):
            for i in range(ENDPOINTS_CAP):
                assert (await acme.post("/api/webhooks", json={"url": pit.url(f"t{i}")})).status_code == 201
            hung = [await finished_job(acme) for _ in range(3)]
            async with asyncio.timeout(60):
                while not pit.held:  # noqa: ASYNC110 - acme's deliveries are hanging now
                    await asyncio.sleep(0.05)
            assert (await globex.post("/api/webhooks", json={"url": victim.url})).status_code == 201
            await finished_job(globex)
            # which comes first: globex's delivery, or the end of acme's first attempt (30 s)?
            async with asyncio.timeout(120):
                while not victim.calls and not any([await attempts_of(acme, j) for j in hung]):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            assert victim.calls, "globex's delivery waited for acme's tarpit attempts to time out"
            assert not any([await attempts_of(acme, j) for j in hung])  # acme's are still hanging


async def test_an_endpoint_failing_again_and_again_is_disabled(
    processes: Processes, settings: Settings
) -> None:
    settings = settings.model_copy(
        update={
            "webhook_disable_after": 3,
            "webhook_retry_delays_s": "0.2,0.2,0.2,0.2",
            "webhook_timeout_s": 5.0,
        }
    )
    api, base = processes.start_api(settings)
    processes.start_worker(settings)
    (acme_key,) = await tenant_clients(base, "acme")
    with receiver(fail_first=1000) as failing, receiver() as healthy:
        async with api_client(base, key=acme_key, timeout=30) as acme:
            broken = (await acme.post("/api/webhooks", json={"url": failing.url})).json()["id"]
            assert (await acme.post("/api/webhooks", json={"url": healthy.url})).status_code == 201
            first = await finished_job(acme)
            async with asyncio.timeout(60):  # five attempts if it is never disabled, else three
                while len([a for a in await attempts_of(acme, first) if a["target"] == broken]) < 3:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
            async with asyncio.timeout(30):
                while True:
                    listed = {e["id"]: e for e in (await acme.get("/api/webhooks")).json()["endpoints"]}
                    if listed[broken].get("disabledAt") or len(failing.calls) > 3:
                        break
                    await asyncio.sleep(0.1)
            assert listed[broken].get("disabledAt"), listed[broken]
            assert "3 attempts in a row failed" in listed[broken]["disabledReason"]
            second = await finished_job(acme)
            wait_calls(healthy, 2)  # the second job's event has reached the healthy endpoint
            await asyncio.sleep(1)  # time for the last retry, if one were still scheduled
            assert broken not in {a["target"] for a in await attempts_of(acme, second)}
    assert len(failing.calls) == 3
    assert f"webhook endpoint {broken} of tenant acme disabled" in api.log.read_text()


def events(hook: Receiver, event_type: str) -> list[tuple[dict[str, str], bytes]]:
    return [(headers, body) for headers, body in hook.calls if json.loads(body)["type"] == event_type]


async def test_a_disabled_endpoint_is_announced_to_the_tenants_other_endpoints(
    processes: Processes, settings: Settings
) -> None:
    """Like Stripe's and Svix's: the endpoint's own tenant learns of it through its other endpoints
    that take endpoint.disabled (every event, by default), signed as any delivery."""
    settings = settings.model_copy(
        update={"webhook_disable_after": 2, "webhook_retry_delays_s": "0.2,0.2,0.2", "webhook_timeout_s": 5.0}
    )
    _, base = processes.start_api(settings)
    processes.start_worker(settings)
    acme_key, globex_key = await tenant_clients(base, "acme", "globex")
    with (
        receiver(fail_first=1000) as failing,
        receiver() as told,
        receiver() as jobs_only,
        receiver() as elsewhere,
    ):
        async with (
            api_client(base, key=acme_key, timeout=30) as acme,
            api_client(base, key=globex_key) as globex,
        ):
            broken = (await acme.post("/api/webhooks", json={"url": failing.url})).json()["id"]
            created = (await acme.post("/api/webhooks", json={"url": told.url})).json()
            assert "endpoint.disabled" in created["events"]
            only = {"url": jobs_only.url, "events": ["job.completed"]}
            assert (await acme.post("/api/webhooks", json=only)).status_code == 201
            assert (await globex.post("/api/webhooks", json={"url": elsewhere.url})).status_code == 201
            await finished_job(acme)
            async with asyncio.timeout(60):  # only stops a hung test
                while not events(told, "endpoint.disabled"):  # noqa: ASYNC110
                    await asyncio.sleep(0.05)
            [(headers, body)] = events(told, "endpoint.disabled")
            payload = Webhook(created["secret"]).verify(body, headers)
            listed = {e["id"]: e for e in (await acme.get("/api/webhooks")).json()["endpoints"]}
            assert payload["tenant"] == "acme"
            assert payload["data"] == listed[broken]
            assert (
                payload["data"]["disabledAt"]
                and "2 attempts in a row failed" in payload["data"]["disabledReason"]
            )
            assert headers["webhook-id"] == f"msg_{broken}_endpoint.disabled"

            # a later job's event reaches the job-only endpoint after the announcement was filed
            await finished_job(acme)
            wait_calls(jobs_only, 2)
            wait_calls(told, 3)
            # every attempt counted by outcome: the broken endpoint's first (tried again) and its
            # second (it was disabled: no more tries); the others' five
            expected = {"delivered": 5, "failed": 1, "given_up": 1}
            async with asyncio.timeout(30):  # the counts follow the receivers' answers
                while (outcomes := await delivery_outcomes(base)) != expected:
                    assert all(outcomes[o] <= n for o, n in expected.items()), outcomes
                    await asyncio.sleep(0.1)
    assert [json.loads(body)["type"] for _, body in jobs_only.calls] == ["job.completed"] * 2
    assert elsewhere.calls == []  # another tenant's endpoint hears nothing of it
    assert len(failing.calls) == 2  # the disabled endpoint is told nothing more


async def delivery_outcomes(base: str) -> dict[str, float]:
    """imgflow_webhook_deliveries_total by outcome, from the API's /metrics."""
    async with httpx.AsyncClient(base_url=base) as client:
        text = (await client.get("/metrics")).text
    return {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "imgflow_webhook_deliveries_total"
    }


@pytest.mark.slow  # a fan-out sent one target at a time, for longer than the reclaim idle time
async def test_two_replicas_send_each_delivery_once(processes: Processes, settings: Settings) -> None:
    settings = settings.model_copy(update={"webhook_tenant_concurrency": 1, "webhook_timeout_s": 10.0})
    _, base = processes.start_api(settings)
    processes.start_api(settings)
    processes.start_worker(settings)
    (acme_key,) = await tenant_clients(base, "acme")
    with receiver(answer_after=3.5) as slow:  # 20 targets one by one: 70 s, above the 60 s reclaim
        async with api_client(base, key=acme_key, timeout=30) as acme:
            for i in range(ENDPOINTS_CAP):
                url = f"{slow.url}/{i}"
                assert (await acme.post("/api/webhooks", json={"url": url})).status_code == 201
            job_id = await finished_job(acme)
            async with asyncio.timeout(300):
                while len([a for a in await attempts_of(acme, job_id) if a["delivered"]]) < ENDPOINTS_CAP:  # noqa: ASYNC110
                    await asyncio.sleep(0.5)
            await asyncio.sleep(1)  # a duplicate already sent is seen by now
            attempts = await attempts_of(acme, job_id)
    assert len(slow.calls) == ENDPOINTS_CAP, f"{len(slow.calls)} calls for {ENDPOINTS_CAP} deliveries"
    assert len(attempts) == ENDPOINTS_CAP


async def test_a_callback_is_signed_with_its_tenants_own_secret(
    processes: Processes, settings: Settings
) -> None:
    settings = settings.model_copy(update={"webhook_timeout_s": 5.0})
    _, base = processes.start_api(settings)
    processes.start_worker(settings)
    acme_key, globex_key = await tenant_clients(base, "acme", "globex")
    with receiver() as globex_receiver:
        async with (
            api_client(base, key=acme_key, timeout=30) as acme,
            api_client(base, key=globex_key) as globex,
        ):
            globex_secret = (await globex.post("/api/webhooks/secret")).json()["secret"]
            made = await acme.post("/api/webhooks/secret")
            assert made.status_code == 200, made.text
            acme_secret = made.json()["secret"]
            assert acme_secret.startswith("whsec_") and made.json().get("previousValidUntil") is None
            # acme's job aimed at globex's receiver: globex, verifying with its own secret, refuses it
            job_id = await finished_job(acme, callbackUrl=globex_receiver.url)
            wait_calls(globex_receiver, 1)
            headers, body = globex_receiver.calls[0]
            payload = Webhook(acme_secret).verify(body, headers)
            assert payload["tenant"] == "acme" and payload["data"]["jobId"] == job_id
            for other in (globex_secret, SERVICE_SECRET):
                with pytest.raises(Exception, match=r"(?i)signature"):
                    Webhook(other).verify(body, headers)

            # rotated: the new secret is shown once, and the old one still verifies for a while
            rotated = (await acme.post("/api/webhooks/secret")).json()
            assert rotated["secret"] != acme_secret and rotated["previousValidUntil"]
            await finished_job(acme, callbackUrl=globex_receiver.url)
            wait_calls(globex_receiver, 2)
            headers, body = globex_receiver.calls[1]
            for secret in (rotated["secret"], acme_secret):
                assert Webhook(secret).verify(body, headers)["tenant"] == "acme"


async def test_racing_registrations_stop_at_the_cap(processes: Processes, settings: Settings) -> None:
    _, base = processes.start_api(settings)
    async with api_client(base, timeout=30) as admin:  # a burst of 40 is within its rate
        acme_key = await make_key(admin, "acme", "jobs:read", "jobs:write", create_burst=100)
    async with api_client(base, key=acme_key, timeout=60) as acme:
        replies = await asyncio.gather(
            *(acme.post("/api/webhooks", json={"url": f"http://127.0.0.1:9/hook{i}"}) for i in range(40))
        )
        listed = (await acme.get("/api/webhooks")).json()["endpoints"]
        codes = sorted(r.status_code for r in replies)
        assert codes == [201] * ENDPOINTS_CAP + [409] * ENDPOINTS_CAP, codes
        assert len(listed) == ENDPOINTS_CAP
        # a deletion gives its place back
        assert (await acme.delete(f"/api/webhooks/{listed[0]['id']}")).status_code == 204
        assert (await acme.post("/api/webhooks", json={"url": "http://127.0.0.1:9/again"})).status_code == 201
        assert (await acme.post("/api/webhooks", json={"url": "http://127.0.0.1:9/more"})).status_code == 409
