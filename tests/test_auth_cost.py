"""What a caller without a valid key costs: no MongoDB lookup for a malformed key, one per
distinct well-formed id within IMGFLOW_KEY_CACHE_S, and past IMGFLOW_AUTH_FAILURE_BURST failed
authentications from one address, 429 with Retry-After and no lookup at all. Counted with the
API's own ``imgflow_mongodb_commands_total``, against a real API and MongoDB-wire server."""

from __future__ import annotations

import asyncio
import math
import secrets

import httpx

from imgflow.core.settings import Settings
from imgflow.harness.client import api_client, make_key
from imgflow.harness.ops import mongo_commands
from tests.conftest import Processes

# the defaults of IMGFLOW_AUTH_FAILURE_BURST and IMGFLOW_AUTH_FAILURES_PER_S
BURST, PER_S = 20, 1.0
PRESETS = "/api/presets"  # any route that needs a key and nothing of MongoDB


def start(processes: Processes, settings: Settings, **changes: object) -> str:
    # no reconciler round during the test: only the requests below may touch MongoDB
    _, base = processes.start_api(settings.model_copy(update={"reconcile_interval_s": 3600, **changes}))
    return base


async def lookups(base: str) -> int:
    """The API's MongoDB find commands so far (a key lookup is one)."""
    return (await mongo_commands([f"{base}/metrics"]))["find"]


def well_formed(key_id: str) -> str:
    return f"imgf_{key_id}_{secrets.token_urlsafe(32)}"


async def get_as(client: httpx.AsyncClient, key: str) -> httpx.Response:
    return await client.get(PRESETS, headers={"Authorization": f"Bearer {key}"})


async def test_malformed_keys_cost_no_lookup(processes: Processes, fresh_settings: Settings) -> None:
    base = start(processes, fresh_settings)
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        before = await lookups(base)
        for key in ["nonsense", "imgf_short_x", "imgf_" + "g" * 16 + "_" + "x" * 43, "x" * 500] * 10:
            answer = await get_as(client, key)
            assert answer.status_code in (401, 429), answer.text
        assert await lookups(base) == before


async def test_an_unknown_key_is_looked_up_once_per_cache_period(
    processes: Processes, fresh_settings: Settings
) -> None:
    base = start(processes, fresh_settings, key_cache_s=2.0)
    key = well_formed(secrets.token_hex(8))
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        before, started = await lookups(base), loop.time()
        for _ in range(BURST - 1):  # within the address's allowance: each one is answered 401
            answer = await get_as(client, key)
            assert answer.status_code == 401, answer.text
        periods = math.ceil((loop.time() - started) / 2.0)
        assert await lookups(base) - before <= periods


async def test_failed_authentications_from_one_address_are_throttled(
    processes: Processes, fresh_settings: Settings
) -> None:
    base = start(processes, fresh_settings)
    loop = asyncio.get_running_loop()
    async with api_client(base, timeout=30) as admin, httpx.AsyncClient(base_url=base, timeout=30) as client:
        # a real key of the same address (a NAT, a proxy), used before the flood
        real = await make_key(admin, "acme", "jobs:read")
        assert (await get_as(client, real)).status_code == 200
        before, started = await lookups(base), loop.time()
        statuses = []
        retry_after = []
        for _ in range(100):  # a different made-up id each time: no cache can answer them
            answer = await get_as(client, well_formed(secrets.token_hex(8)))
            statuses.append(answer.status_code)
            if answer.status_code == 429:
                assert answer.headers["content-type"] == "application/problem+json"
                retry_after.append(int(answer.headers["retry-after"]))
        refilled = math.ceil((loop.time() - started) * PER_S)
        assert statuses[:BURST] == [401] * BURST
        assert statuses.count(429) >= 100 - BURST - refilled, statuses
        assert retry_after and min(retry_after) >= 1
        assert await lookups(base) - before <= BURST + refilled
        # made-up keys are refused without a lookup; the real key is still looked up and works
        assert (await get_as(client, real)).status_code == 200
        assert (await get_as(client, "malformed")).status_code == 429
