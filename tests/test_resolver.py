"""Host name lookups for URLs (sources, webhook endpoints, callback URLs) go through imgflow's own
resolver, against real name servers on loopback (IMGFLOW_DNS_SERVERS): a name server that never
answers costs a lookup IMGFLOW_DNS_TIMEOUT_S and a clear error, holds no thread, and uploads are
probed meanwhile; the address checks stay what they were."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgflow.core.fetch import FetchFailed, FetchRefused, check_url, fetch_to_file
from imgflow.core.settings import Settings
from imgflow.harness import images
from imgflow.harness.client import api_client, make_key, submit
from tests.conftest import Processes
from tests.nameserver import NameServer, name_server


@pytest.fixture
def silent() -> Iterator[NameServer]:
    with name_server() as server:
        yield server


async def test_a_lookup_that_hangs_fails_after_the_timeout_with_a_clear_error(
    silent: NameServer, tmp_path: Path
) -> None:
    # the fetch's own limit is far longer: the error must be the lookup's
    settings = Settings(dns_servers=silent.spec, dns_timeout_s=1.0, fetch_timeout_s=60.0)
    with pytest.raises(FetchFailed) as failed:
        await fetch_to_file("http://images.example.com/a.jpg", tmp_path / "source", settings)
    assert failed.value.transient  # the job is retried later
    assert "looking up 'images.example.com' took longer than 1 s (IMGFLOW_DNS_TIMEOUT_S)" in str(failed.value)
    assert silent.queries > 0  # asked the configured server, not the system's
    # the early check does not refuse what it could not look up: the fetch checks when it connects
    await check_url("http://images.example.com/a.jpg", settings)


async def test_names_are_checked_through_the_configured_server() -> None:
    with name_server("10.1.2.3") as server:
        settings = Settings(dns_servers=server.spec)
        with pytest.raises(
            FetchRefused, match=r"intranet\.example resolves to 10\.1\.2\.3, which is a private"
        ):
            await check_url("http://intranet.example/a.jpg", settings)
        assert server.queries > 0
    with name_server("93.184.215.14") as server:
        await check_url("http://public.example/a.jpg", Settings(dns_servers=server.spec))


async def test_hanging_lookups_do_not_hold_up_uploads(
    processes: Processes, fresh_settings: Settings, silent: NameServer
) -> None:
    settings = fresh_settings.model_copy(
        update={"dns_servers": silent.spec, "dns_timeout_s": 5.0, "reconcile_interval_s": 3600}
    )
    _, base = processes.start_api(settings)
    async with api_client(base, timeout=120) as admin:
        key = await make_key(admin, "uploader", "jobs:write", "jobs:read")
        # three times the threads a process keeps for blocking work (anyio: 40), where the
        # probes run: lookups that held them would leave each upload waiting for three timeouts
        endpoints = [
            asyncio.create_task(admin.post("/api/webhooks", json={"url": f"http://hook-{n}.example/in"}))
            for n in range(120)
        ]
        await asyncio.sleep(1.0)
        async with api_client(base, key=key, timeout=10) as uploader:
            for _ in range(3):
                accepted = await submit(uploader, images.jpeg(64, 64))
                assert accepted.status_code == 202, accepted.text
        assert not all(task.done() for task in endpoints), "the lookups were over before the uploads"
        answers = await asyncio.gather(*endpoints)
        assert {answer.status_code for answer in answers} <= {201, 409}, [a.text for a in answers]
    assert silent.queries > 0
