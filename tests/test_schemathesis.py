"""The OpenAPI document says what the server enforces: schemathesis, a property-based tester, reads
the live API's /openapi.json and sends it requests made from the schema, valid and invalid, with a
tenant's key and with an admin key, and checks every answer against the document (all its checks:
no 5xx, only documented statuses, content types, headers and bodies; valid data accepted, invalid
data refused; auth enforced; 405 with an Allow header that lists the path's methods).

The run is bounded (a few examples per operation, a fixed seed) so it is the same every time.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgflow.harness.client import ADMIN_KEY, api_client, make_key
from tests.conftest import Processes, make_settings
from tests.nameserver import name_server

SEED = 24
MAX_EXAMPLES = 10
HOOKS = "tests.schemathesis_hooks"  # the refusals no schema can say; no URL of a public address
ROOT = Path(__file__).parent.parent


@pytest.fixture
def live_api(redis_url: str, mongodb_url: str, processes: Processes) -> Iterator[str]:
    """An API of its own (a database and stream no other test shares), no worker: schemathesis
    cannot make an image, so no job it sends is accepted. Names resolve at a loopback name server
    that knows none, so no URL it registers (webhooks, callbackUrl) reaches past this machine."""
    with name_server(missing=True) as dns:
        settings = make_settings(
            redis_url,
            mongodb_url,
            dns_servers=dns.spec,
            webhook_secret="whsec_" + "c2NoZW1hdGhlc2lzLXNlY3JldC1rZXktMzItYnl0ZXM=",
            # one address sends every probe, missing and invalid keys too: not a credential-stuffer
            auth_failure_burst=100_000,
        )
        _, base_url = processes.start_api(settings)
        yield base_url


def schemathesis(base_url: str, key: str, where: Path) -> subprocess.Popen[str]:
    """A run of every check, positive and negative data, as ``key``; its report on stdout."""
    command = [
        *(str(Path(sys.executable).parent / "st"), "run", f"{base_url}/openapi.json"),
        *("--checks", "all", "--mode", "all", "--seed", str(SEED), "--max-examples", str(MAX_EXAMPLES)),
        *("--workers", "1", "--generation-database", "none", "--no-color"),
        *("--header", f"Authorization: Bearer {key}"),
    ]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=where,  # its cache goes there
        env={**os.environ, "SCHEMATHESIS_HOOKS": HOOKS, "PYTHONPATH": str(ROOT)},
    )


async def test_the_live_api_answers_as_its_openapi_document_says(live_api: str, tmp_path: Path) -> None:
    async with api_client(live_api) as admin:
        tenant_key = await make_key(
            admin, "fuzz", "jobs:read", "jobs:write", create_per_s=100_000, read_per_s=100_000
        )
    # both at once: each mostly waits for the API's answers
    keys = {"tenant": tenant_key, "admin": ADMIN_KEY}
    runs = {who: schemathesis(live_api, key, tmp_path) for who, key in keys.items()}
    try:
        reports = {
            who: (await asyncio.to_thread(run.communicate, timeout=600))[0] for who, run in runs.items()
        }
    finally:
        for run in runs.values():
            run.kill()
    failed = [f"with the {who} key:\n{reports[who][-30_000:]}" for who, run in runs.items() if run.returncode]
    assert not failed, "\n\n".join(failed)


async def test_a_key_without_the_scope_is_refused_before_its_body_is_read(live_api: str) -> None:
    async with api_client(live_api) as admin:
        reader = await make_key(admin, "readers", "jobs:read")
    async with api_client(live_api, key=reader) as client:
        for path in ("/api/admin/keys", "/api/webhooks"):
            for body in (b"\xff not json", b'{"unknown": 1}'):
                answer = await client.post(path, content=body, headers={"Content-Type": "application/json"})
                assert answer.status_code == 403, (path, body, answer.text)


async def test_a_method_a_path_does_not_take_is_405_with_every_method_it_does(live_api: str) -> None:
    async with api_client(live_api) as client:
        expected = {
            ("OPTIONS", "/api/image-processing/jobs/some-job"): "DELETE, GET",
            ("PUT", "/api/admin/keys"): "GET, POST",
            ("DELETE", "/api/webhooks/secret"): "POST",
        }
        for (method, path), allowed in expected.items():
            answer = await client.request(method, path)
            assert (answer.status_code, answer.headers.get("allow")) == (405, allowed), (method, path)
