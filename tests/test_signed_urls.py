"""Signed delivery URLs (issue 25): a completed job's outputs at URLs that need no key, cacheable,
refused when tampered with, expired, made for another tenant or revoked by the tenant; seen by a
real browser (Debian's headless Chromium) through ``<img src>``."""

from __future__ import annotations

import asyncio
import base64
import functools
import http.server
import json
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import pyvips

from imgflow.api.signed_urls import MAX_STEP_S, expiry
from imgflow.core.settings import Settings
from imgflow.harness import images
from imgflow.harness.client import JOBS, api_client, make_key, submit, wait_finished
from imgflow.harness.receivers import receiver
from imgflow.harness.servers import S3Server, free_port
from tests.conftest import Processes, make_settings, on_s3
from tests.test_cli import environment, imgflow

SIGNING_KEY = secrets.token_urlsafe(32)
VARIANTS = json.dumps(
    [{"name": "card", "width": 40, "height": 30}, {"name": "big", "width": 80, "height": 60, "format": "png"}]
)


@dataclass
class Signing:
    base_url: str
    settings: Settings
    processes: Processes
    keys: dict[str, str]  # tenant -> a jobs:read + jobs:write key


@pytest.fixture(scope="module")
async def signing(
    redis_url: str, mongodb_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Signing]:
    settings = make_settings(
        redis_url, mongodb_url, url_signing_key=SIGNING_KEY, url_tenant_ttl_s={"brief": 600}
    )
    processes = Processes(tmp_path_factory.mktemp("signed-url-logs"))
    try:
        _, base_url = processes.start_api(settings)
        processes.start_worker(settings)
        async with api_client(base_url, timeout=30) as admin:
            keys = {
                t: await make_key(admin, t, "jobs:read", "jobs:write") for t in ("acme", "globex", "brief")
            }
        yield Signing(base_url, settings, processes, keys)
    finally:
        processes.stop_all()


async def completed(base_url: str, key: str, **fields: str) -> dict[str, Any]:
    async with api_client(base_url, key=key, timeout=30) as client:
        reply = await submit(client, images.jpeg(), **fields)
        assert reply.status_code == 202, reply.text
        job = await wait_finished(client, reply.json()["jobId"])
    assert job["status"] == "completed", job
    return job


def dims(data: bytes) -> tuple[int, int]:
    image = pyvips.Image.new_from_buffer(data, "")
    return image.width, image.height


def tampered(url: str) -> str:
    """The URL with the last character of its signature changed."""
    last = url[-1]
    return url[:-1] + ("A" if last != "A" else "B")


def max_age(reply: httpx.Response) -> int:
    match = re.search(r"max-age=(\d+)", reply.headers["cache-control"])
    assert match, reply.headers["cache-control"]
    return int(match.group(1))


def expires_of(url: str) -> int:
    return int(parse_qs(urlsplit(url).query)["expires"][0])


def assert_refused(reply: httpx.Response, status: int = 403) -> dict[str, Any]:
    assert reply.status_code == status, reply.text
    assert reply.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = reply.json()
    assert problem["status"] == status and problem["detail"]
    return problem


async def test_a_completed_job_shows_signed_urls_a_client_without_key_can_fetch_and_cache(
    signing: Signing,
) -> None:
    before = time.time()
    job = await completed(signing.base_url, signing.keys["acme"], variants=VARIANTS)
    result = job["result"]
    card, big = result["variants"]["card"], result["variants"]["big"]
    assert result["signedUrl"] == card["signedUrl"]  # the thumbnail is the first variant
    for output in (card, big):
        assert output["signedUrl"].startswith(f"{signing.base_url}/signed/acme/{job['jobId']}/")
    expires_at = datetime.fromisoformat(result["signedUrlExpiresAt"]).timestamp()
    # the default lifetime, IMGFLOW_URL_TTL_S, rounded up by at most a step
    assert before + 86400 <= expires_at <= time.time() + 86400 + MAX_STEP_S
    assert expires_of(big["signedUrl"]) == expires_at

    async with api_client(signing.base_url, key=signing.keys["acme"], timeout=30) as owner:
        with_key = await owner.get(big["url"])
    async with httpx.AsyncClient(timeout=30) as anyone:
        assert (await anyone.get(signing.base_url + big["url"])).status_code == 401  # url: Bearer only
        asked_at = time.time()
        reply = await anyone.get(big["signedUrl"])
        assert reply.status_code == 200, reply.text
        assert reply.content == with_key.content and reply.headers["content-type"] == "image/png"
        assert dims(reply.content) == (80, 60)
        cache = reply.headers["cache-control"]
        assert cache.startswith("public") and "immutable" in cache, cache
        assert 0 < max_age(reply) <= expires_at - asked_at + 1
        etag = reply.headers["etag"]
        again = await anyone.get(big["signedUrl"], headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.headers["etag"] == etag


async def test_tampered_and_other_tenants_signatures_are_refused(signing: Signing) -> None:
    job = await completed(signing.base_url, signing.keys["acme"], variants=VARIANTS)
    theirs = await completed(signing.base_url, signing.keys["globex"])
    card = job["result"]["variants"]["card"]["signedUrl"]
    big = job["result"]["variants"]["big"]["signedUrl"]
    path, query = card.split("?")
    other_path = theirs["result"]["signedUrl"].split("?")[0]
    forged = [
        tampered(card),  # the signature
        card.replace(f"expires={expires_of(card)}", f"expires={expires_of(card) + 3600}"),  # a longer life
        big.split("?")[0] + "?" + query,  # another file of the same job with this one's signature
        card.replace("/signed/acme/", "/signed/globex/"),  # another tenant
        other_path + "?" + query,  # another tenant's file with this signature
        theirs["result"]["signedUrl"].replace(theirs["jobId"], job["jobId"]),  # their signature, our job
    ]
    async with httpx.AsyncClient(timeout=30) as anyone:
        for url in forged:
            assert "signature" in assert_refused(await anyone.get(url))["detail"], url
        missing = await anyone.get(path + "?signature=" + query.split("signature=")[1])
        problem = assert_refused(missing, 422)
        assert [e["field"] for e in problem["errors"]] == ["expires"]
        assert (await anyone.get(card)).status_code == 200  # the real one still works


async def test_urls_are_signed_again_for_the_asked_lifetime_and_bad_lifetimes_are_refused(
    signing: Signing,
) -> None:
    job = await completed(signing.base_url, signing.keys["acme"])
    async with api_client(signing.base_url, key=signing.keys["acme"], timeout=30) as owner:
        before = time.time()
        reply = await owner.get(f"{JOBS}/{job['jobId']}/urls", params={"ttl": 3600})
        assert reply.status_code == 200, reply.text
        urls = reply.json()
        expires_at = datetime.fromisoformat(urls["expiresAt"]).timestamp()
        assert before + 3600 <= expires_at <= time.time() + 3600 + 3600 // 24
        assert expires_of(urls["signedUrl"]) == expires_at
        for ttl in ("0", "604801", "soon"):
            problem = assert_refused(await owner.get(f"{JOBS}/{job['jobId']}/urls", params={"ttl": ttl}), 422)
            assert [e["field"] for e in problem["errors"]] == ["ttl"], ttl
    async with api_client(signing.base_url, key=signing.keys["globex"], timeout=30) as other:
        assert_refused(await other.get(f"{JOBS}/{job['jobId']}/urls"), 404)  # another tenant's job
    async with httpx.AsyncClient(timeout=30) as anyone:
        assert (await anyone.get(urls["signedUrl"])).status_code == 200
    # a tenant's own lifetime (IMGFLOW_URL_TENANT_TTL_S: brief's is 600 s)
    before = time.time()
    brief = await completed(signing.base_url, signing.keys["brief"])
    expires_at = datetime.fromisoformat(brief["result"]["signedUrlExpiresAt"]).timestamp()
    assert before + 600 <= expires_at <= time.time() + 600 + 600 // 24


async def test_an_expired_url_is_refused(signing: Signing) -> None:
    job = await completed(signing.base_url, signing.keys["acme"])
    async with api_client(signing.base_url, key=signing.keys["acme"], timeout=30) as owner:
        url = (await owner.get(f"{JOBS}/{job['jobId']}/urls", params={"ttl": 1})).json()["signedUrl"]
    await asyncio.sleep(max(0.0, expires_of(url) - time.time()) + 0.5)
    async with httpx.AsyncClient(timeout=30) as anyone:
        assert "expired" in assert_refused(await anyone.get(url))["detail"]


async def test_revoking_a_key_keeps_its_urls_and_rotating_the_tenant_secret_voids_them(
    signing: Signing,
) -> None:
    async with api_client(signing.base_url, timeout=30) as admin:
        doomed = await make_key(admin, "initech", "jobs:read", "jobs:write")
        keeper = await make_key(admin, "initech", "jobs:read", "jobs:write")
        job = await completed(signing.base_url, doomed)
        assert (await admin.delete(f"/api/admin/keys/{doomed.split('_')[1]}")).status_code == 204
    url = job["result"]["signedUrl"]
    async with (
        httpx.AsyncClient(timeout=30) as anyone,
        api_client(signing.base_url, key=keeper, timeout=30) as tenant,
    ):
        assert (await anyone.get(url)).status_code == 200  # the key that got it is revoked: it works
        rotated = await tenant.post("/api/signed-urls/rotate")
        assert rotated.status_code == 200 and rotated.json()["rotatedAt"], rotated.text
        assert_refused(await anyone.get(url))
        fresh = (await tenant.get(f"{JOBS}/{job['jobId']}")).json()["result"]["signedUrl"]
        assert fresh != url and (await anyone.get(fresh)).status_code == 200


async def test_the_previous_signing_key_still_verifies_what_it_signed(signing: Signing) -> None:
    job = await completed(signing.base_url, signing.keys["acme"])
    old_url = job["result"]["signedUrl"]
    new_key = secrets.token_urlsafe(32)
    rotating = signing.settings.model_copy(
        update={"url_signing_key": new_key, "url_signing_previous_key": SIGNING_KEY}
    )
    _, rotating_url = signing.processes.start_api(rotating)
    _, rotated_url = signing.processes.start_api(
        rotating.model_copy(update={"url_signing_previous_key": None})
    )
    path = old_url.removeprefix(signing.base_url)
    async with httpx.AsyncClient(timeout=30) as anyone:
        assert (await anyone.get(rotating_url + path)).status_code == 200
        assert_refused(await anyone.get(rotated_url + path))  # once the old key is gone
    async with api_client(rotating_url, key=signing.keys["acme"], timeout=30) as owner:
        new_url = (await owner.get(f"{JOBS}/{job['jobId']}")).json()["result"]["signedUrl"]
    async with httpx.AsyncClient(timeout=30) as anyone:
        assert (await anyone.get(rotated_url + new_url.removeprefix(rotating_url))).status_code == 200


async def test_with_s3_presigning_the_signed_url_is_a_presigned_object_url(
    redis_url: str, mongodb_url: str, s3: S3Server, processes: Processes
) -> None:
    settings = on_s3(make_settings(redis_url, mongodb_url), s3, s3_presign=True, url_signing_key=SIGNING_KEY)
    _, base_url = processes.start_api(settings)
    processes.start_worker(settings)
    async with api_client(base_url, timeout=30) as admin:
        key = await make_key(admin, "acme", "jobs:read", "jobs:write")
    job = await completed(base_url, key)
    url = job["result"]["signedUrl"]
    assert url.startswith(s3.endpoint), url
    async with httpx.AsyncClient(timeout=30) as anyone:
        reply = await anyone.get(url)
        assert reply.status_code == 200 and dims(reply.content) == (100, 100)
        assert reply.headers["cache-control"].startswith("public, max-age=")
        assert "immutable" in reply.headers["cache-control"]
        assert (await anyone.get(url.replace("Signature=", "Signature=0"))).status_code == 403


async def test_the_cli_signs_a_jobs_urls(signing: Signing, tmp_path: Path) -> None:
    job = await completed(signing.base_url, signing.keys["acme"], variants=VARIANTS)
    env = environment(signing.base_url, signing.keys["acme"], tmp_path)
    before = time.time()
    run = await imgflow(env, "jobs", "urls", job["jobId"], "--ttl", "600", "-o", "json")
    assert run.returncode == 0, run.stderr
    signed = json.loads(run.stdout)
    assert before + 600 <= datetime.fromisoformat(signed["expiresAt"]).timestamp() <= time.time() + 625
    async with httpx.AsyncClient(timeout=30) as anyone:
        assert (await anyone.get(signed["variants"]["big"])).status_code == 200
    run = await imgflow(env, "jobs", "urls", job["jobId"])
    assert run.returncode == 0, run.stderr
    lines = [line.split(" ") for line in run.stdout.splitlines()]
    assert [name for name, _ in lines] == ["card", "big"] and all("/signed/acme/" in url for _, url in lines)
    assert "valid until" in run.stderr
    refused = await imgflow(env, "jobs", "urls", job["jobId"], "--ttl", "0")
    assert refused.returncode != 0 and "--ttl" in refused.stderr


async def test_webhooks_carry_signed_urls_under_the_configured_base(
    processes: Processes, fresh_settings: Settings
) -> None:
    """IMGFLOW_URL_BASE (a CDN in front, say) starts every signed URL; the signature covers the path
    only, so the same path works on the API itself."""
    settings = fresh_settings.model_copy(
        update={
            "url_signing_key": SIGNING_KEY,
            "url_base": "https://cdn.example.test",
            "allow_private_urls": True,  # the receiver is on loopback
            "webhook_secret": "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
        }
    )
    _, base_url = processes.start_api(settings)
    processes.start_worker(settings)
    with receiver() as hook:
        async with api_client(base_url, timeout=30) as client:
            reply = await submit(client, images.jpeg(), callbackUrl=hook.url)
            job = await wait_finished(client, reply.json()["jobId"])
            assert job["result"]["signedUrl"].startswith("https://cdn.example.test/signed/")
        deadline = time.monotonic() + 60
        while not hook.calls:
            assert time.monotonic() < deadline, "no webhook"
            await asyncio.sleep(0.05)
    sent = json.loads(hook.calls[0][1])["data"]["result"]["signedUrl"]
    assert sent.startswith("https://cdn.example.test/signed/default/" + job["jobId"])
    async with httpx.AsyncClient(timeout=30) as anyone:
        assert (await anyone.get(base_url + sent.removeprefix("https://cdn.example.test"))).status_code == 200


async def test_an_address_sending_forged_urls_is_slowed_down_like_failed_keys(
    processes: Processes, fresh_settings: Settings
) -> None:
    settings = fresh_settings.model_copy(update={"url_signing_key": SIGNING_KEY, "auth_failure_burst": 3})
    _, base_url = processes.start_api(settings)
    processes.start_worker(settings)
    async with api_client(base_url, timeout=30) as client:
        job = await wait_finished(client, (await submit(client, images.jpeg())).json()["jobId"])
    url = job["result"]["signedUrl"]
    async with httpx.AsyncClient(timeout=30) as anyone:
        assert (await anyone.get(url)).status_code == 200
        refused = [(await anyone.get(tampered(url))).status_code for _ in range(5)]
        assert refused[:3] == [403, 403, 403] and refused[3:] == [429, 429], refused
        throttled = await anyone.get(url.replace("/signed/default/", "/signed/made-up/"))
        assert throttled.status_code == 429 and int(throttled.headers["retry-after"]) >= 1
        assert (await anyone.get(url)).status_code == 200  # its tenant's real URLs still work


def test_expiries_are_rounded_up_to_a_step_and_never_outlive_the_job() -> None:
    step = 86400 // 24
    assert expiry(1000.0, 86400, None) == step * 25  # 87400 rounded up to the hour
    assert expiry(1000.0, 86400, None) == expiry(step * 24 - 86400 + 0.5, 86400, None)
    assert expiry(1000.0, 60, None) == 1060  # a step of 2 s
    assert expiry(1001.0, 60, None) == 1062
    assert expiry(1000.0, 1, None) == 1001
    job_expires = datetime.fromtimestamp(5000.0).astimezone()
    assert expiry(1000.0, 86400, job_expires) == 5000


# --- a real browser --------------------------------------------------------------------------------

PAGE = """<!doctype html>
<html><body>
<script>
const seen = {};
function done(id, loaded) {
  const img = document.getElementById(id);
  seen[id] = loaded ? img.naturalWidth + "x" + img.naturalHeight : "error";
  if (Object.keys(seen).length === 2) document.getElementById("seen").textContent = JSON.stringify(seen);
}
</script>
<img id="signed" src="SIGNED" onload="done('signed', true)" onerror="done('signed', false)">
<img id="tampered" src="TAMPERED" onload="done('tampered', true)" onerror="done('tampered', false)">
<pre id="seen">waiting</pre>
</body></html>
"""


@pytest.fixture
def page_server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A loopback HTTP server of the files in a folder: the page is on another origin than the API."""
    root = tmp_path / "site"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_browser_shows_the_thumbnail_through_its_signed_url_and_nothing_when_tampered(
    signing: Signing, page_server: tuple[Path, str], tmp_path: Path
) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:  # scripts/setup.sh installs it (make setup): missing is a failure, not a skip
        pytest.fail("no chromium on PATH: Debian's chromium package is needed (scripts/setup.sh)")
    job = await completed(signing.base_url, signing.keys["acme"], width="64", height="48")
    signed = job["result"]["signedUrl"]
    root, origin = page_server
    (root / "page.html").write_text(PAGE.replace("TAMPERED", tampered(signed)).replace("SIGNED", signed))
    argv = [
        chromium,
        "--headless",
        "--no-sandbox",  # as root, in a container
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=20000",
        "--dump-dom",
        f"{origin}/page.html",
    ]
    proc = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="seen">(.*?)</pre>', proc.stdout)
    assert found, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads(found.group(1)) == {"signed": "64x48", "tampered": "error"}
