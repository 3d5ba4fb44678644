"""Per-tenant metrics keep a bounded label set (imgflow.core.tenant_metrics): the tenants that
brought the most work by name, all others as "_other" (no tenant's name). The API's /metrics
reports what waits in the tenants' lanes (jobs, cost, the oldest job's wait) even with 10,000
tenants waiting, and a scrape writes nothing and runs as many Redis commands whatever the backlog;
a worker's cost served and wait time are labelled the same way. Real Redis, MongoDB, API and worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Collection, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from imgflow.core import cost, jobkeys, lifecycle, queue, schedule, tenant_metrics
from imgflow.core.jobs import Job, UploadSource
from imgflow.core.keys import TENANT_PATTERN
from imgflow.core.outputs import OutputFormat, ThumbnailSpec
from imgflow.core.settings import Settings, StorageBackend
from imgflow.core.storage import make_storage
from imgflow.core.store import JobStore, connect
from imgflow.core.tenant_metrics import OTHER, TopTenants
from imgflow.harness import images
from imgflow.harness.client import Parts
from imgflow.harness.servers import free_port, redis_server, wait_for_port
from tests.conftest import Processes

TENANTS = 10_000
SOURCE = cost.Source(320, 240)


@pytest.fixture
def settings(fresh_settings: Settings, tmp_path: Path) -> Settings:
    return fresh_settings.model_copy(
        update={"storage_backend": StorageBackend.local, "storage_dir": tmp_path / "files"}
    )


@pytest.fixture
async def parts(settings: Settings) -> AsyncIterator[Parts]:
    mongo = connect(settings)
    redis = Redis.from_url(settings.redis_url)
    db = mongo[settings.mongodb_database]
    found = Parts(settings, JobStore(db), redis, make_storage(settings, db))
    await found.store.ensure_indexes()
    await found.storage.save_bytes("original-shared", images.jpeg(SOURCE.width, SOURCE.height), "image/jpeg")
    yield found
    await redis.aclose()
    await mongo.close()


def job(tenant: str, spec: ThumbnailSpec) -> Job:
    return Job(
        user_id="metrics",
        tenant=tenant,
        source=UploadSource(key="original-shared"),
        spec=spec,
        cost=cost.estimate([spec], SOURCE),
    )


async def queue_many_tenants(parts: Parts) -> int:
    """One job for each of TENANTS tenants, tenant i's costing i + 1 more than the base (only
    queued: nothing reads MongoDB here); their total cost."""
    await queue.ensure_group(parts.redis, parts.settings)
    jobs = []
    for i in range(TENANTS):
        each = job(f"t{i:05d}", ThumbnailSpec(width=32, height=32))
        jobs.append(each.model_copy(update={"cost": 10 + i}))
    async with parts.redis.pipeline(transaction=False) as pipe:
        await jobkeys.publish(pipe, parts.settings, jobs)
        await pipe.execute()
    return sum(each.cost for each in jobs)


async def publish_waiting(redis: Redis, settings: Settings, tenants: int, count: int) -> None:
    """``count`` more jobs waiting in the stream, spread over ``tenants`` tenants."""
    spec = ThumbnailSpec(width=32, height=32)
    for start in range(0, count, 1000):  # one pipeline of all would outlast a read's timeout
        async with redis.pipeline(transaction=False) as pipe:
            made = [job(f"t{i % tenants}", spec) for i in range(start, min(count, start + 1000))]
            await jobkeys.publish(pipe, settings, made)
            await pipe.execute()


async def redis_state(redis: Redis, settings: Settings) -> dict[bytes, bytes | None]:
    """Every key's serialized value (a stream's with its consumer groups and pending entries),
    the webhook sender's keys aside: its idle loop reads its own stream as a consumer."""
    keys = [k async for k in redis.scan_iter(count=1000)]
    senders = f"{settings.stream}:webhooks".encode()
    return {k: await redis.dump(k) for k in sorted(keys) if not k.startswith(senders)}


async def restore(redis: Redis, state: dict[bytes, bytes | None], now: dict[bytes, bytes | None]) -> None:
    """Redis as it was in ``state`` (taken by redis_state)."""
    if gone := [k for k in now if k not in state]:
        await redis.delete(*gone)
    for key, value in state.items():
        if value is not None:
            await redis.restore(key, 0, value, replace=True)


async def redis_calls(redis: Redis) -> int:
    """Commands the server has run so far (a script's commands each count)."""
    stats = await redis.info("commandstats")
    return sum(int(each["calls"]) for each in stats.values())


async def scrape(url: str) -> dict[str, dict[str, float]]:
    """Each metric's value per ``tenant`` label (histograms: their count)."""
    async with httpx.AsyncClient(timeout=60) as client:
        text = (await client.get(url)).text
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if "tenant" in sample.labels and not sample.name.endswith(("_bucket", "_sum", "_created")):
                found.setdefault(sample.name, {})[sample.labels["tenant"]] = sample.value
    return found


async def scrape_until(url: str, metric: str, labels: Collection[str]) -> dict[str, dict[str, float]]:
    """The first scrape whose ``metric`` has these ``tenant`` labels: the API parks what waits
    every reconciler round and reads the ranking again every few seconds."""
    found: dict[str, dict[str, float]] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(120):  # only stops a hung test
            while set((found := await scrape(url)).get(metric, {})) != set(labels):  # noqa: ASYNC110
                await asyncio.sleep(0.25)
    return found


async def test_ten_thousand_waiting_tenants_make_n_plus_one_series(
    processes: Processes, settings: Settings, parts: Parts
) -> None:
    total_cost = await queue_many_tenants(parts)
    _, base = processes.start_api(settings.model_copy(update={"reconcile_interval_s": 0.25}))
    top = {f"t{i:05d}" for i in range(TENANTS - settings.metrics_top_tenants, TENANTS)}
    found = await scrape_until(f"{base}/metrics", "imgflow_tenant_queued_jobs", top | {OTHER})
    for name in (
        "imgflow_tenant_queued_jobs",
        "imgflow_tenant_queued_cost",
        "imgflow_tenant_oldest_wait_seconds",
    ):
        assert set(found[name]) == top | {OTHER}, name
    jobs, costs = found["imgflow_tenant_queued_jobs"], found["imgflow_tenant_queued_cost"]
    assert sum(jobs.values()) == TENANTS
    assert jobs[OTHER] == TENANTS - settings.metrics_top_tenants
    assert sum(costs.values()) == total_cost
    assert costs["t09999"] == 10 + 9999
    assert all(age >= 0 for age in found["imgflow_tenant_oldest_wait_seconds"].values())


async def test_the_worker_labels_cost_served_and_wait_by_the_top_tenants(
    processes: Processes, settings: Settings, parts: Parts
) -> None:
    settings = settings.model_copy(update={"metrics_top_tenants": 1, "worker_concurrency": 1})
    heavy = ThumbnailSpec(width=400, height=400, format=OutputFormat.webp)
    small = ThumbnailSpec(width=32, height=32)
    queued = [job("big", heavy) for _ in range(3)] + [job("small", small), job("tiny", small)]
    for each in queued:
        await lifecycle.accept(parts, each)
    _, base = processes.start_api(settings.model_copy(update={"reconcile_interval_s": 0.25}))
    # before a worker runs: all of it waits
    waiting = await scrape_until(f"{base}/metrics", "imgflow_tenant_queued_jobs", {"big", OTHER})
    assert waiting["imgflow_tenant_queued_jobs"] == {"big": 3, OTHER: 2}
    worker = processes.start_worker(settings)
    url = f"http://127.0.0.1:{worker.env['IMGFLOW_WORKER_METRICS_PORT']}/metrics"
    async with asyncio.timeout(300):  # only stops a hung test
        while (await scrape(url)).get("imgflow_job_wait_seconds_count", {}).get(OTHER, 0) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        while sum((await scrape(url)).get("imgflow_job_cost_served_total", {}).values()) < sum(  # noqa: ASYNC110
            each.cost for each in queued
        ):
            await asyncio.sleep(0.5)
    found = await scrape(url)
    assert found["imgflow_job_wait_seconds_count"] == {"big": 3, OTHER: 2}
    assert found["imgflow_job_cost_served_total"] == {
        "big": 3 * queued[0].cost,
        OTHER: queued[3].cost + queued[4].cost,
    }
    after = await scrape(f"{base}/metrics")
    assert after["imgflow_tenant_queued_jobs"] == {OTHER: 0}  # nothing waits; "_other" stays


async def test_series_follow_the_ranking_and_stay_bounded(
    settings: Settings, parts: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With 10,000 tenants ranked, labelling every one of them gives N + 1 labels; when a tenant
    leaves the top N, its series goes."""
    monkeypatch.setattr(tenant_metrics, "REFRESH_S", 0.0)  # every refresh reads the ranking
    await queue_many_tenants(parts)
    await schedule.park(parts.redis, settings)  # parked: ranked by the work they brought
    served = Counter("served", "test", ["tenant"], registry=CollectorRegistry())
    top = TopTenants(settings.model_copy(update={"metrics_top_tenants": 5}), (served,))
    await top.refresh(parts.redis)
    for i in range(TENANTS):
        served.labels(top.label(f"t{i:05d}")).inc()
    labels = {s.labels["tenant"] for m in served.collect() for s in m.samples if s.name == "served_total"}
    assert labels == {f"t{i:05d}" for i in range(TENANTS - 5, TENANTS)} | {OTHER}

    newcomer = job("newcomer", ThumbnailSpec(width=32, height=32)).model_copy(update={"cost": 10**6})
    async with parts.redis.pipeline(transaction=False) as pipe:
        await jobkeys.publish(pipe, settings, [newcomer])
        await pipe.execute()
    await schedule.park(parts.redis, settings)
    await top.refresh(parts.redis)
    served.labels(top.label("newcomer")).inc()
    labels = {s.labels["tenant"] for m in served.collect() for s in m.samples if s.name == "served_total"}
    assert labels == {"newcomer", *(f"t{i:05d}" for i in range(TENANTS - 4, TENANTS)), OTHER}


@pytest.fixture
def own_redis_url(tmp_path: Path) -> Iterator[str]:
    """A Redis of this test alone: its command counts are the API's and the test's only."""
    port = free_port()
    server = redis_server(tmp_path / "redis", port).start()
    try:
        wait_for_port(port, process=server.process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()


async def test_a_scrape_writes_nothing_and_costs_the_same_whatever_the_backlog(
    processes: Processes, settings: Settings, own_redis_url: str
) -> None:
    """/metrics reads what waits; it neither parks the backlog (a write) nor walks it: the same
    number of Redis commands with 200 or 20,000 jobs waiting."""
    settings = settings.model_copy(update={"redis_url": own_redis_url, "reconcile_interval_s": 3600})
    redis = Redis.from_url(own_redis_url)
    await queue.ensure_group(redis, settings)
    _, base = processes.start_api(settings)
    calls: dict[int, int] = {}
    changed: list[int] = []
    for backlog in (200, 20_000):
        await publish_waiting(redis, settings, 50, backlog - await redis.xlen(settings.stream))
        before = await redis_state(redis, settings)
        each = []
        for _ in range(5):  # the least of five: another loop of the API may run beside one scrape
            start = await redis_calls(redis)
            await scrape(f"{base}/metrics")
            each.append(await redis_calls(redis) - start)
            if (after := await redis_state(redis, settings)) != before:
                changed.append(backlog)
                await restore(redis, before, after)  # each scrape from the same state
        calls[backlog] = min(each)
    await redis.aclose()
    assert calls[200] == calls[20_000], calls
    assert not changed, f"scrapes changed Redis with these backlogs: {changed}"


async def test_a_tenant_named_other_is_not_counted_with_the_others(settings: Settings, parts: Parts) -> None:
    """The label of the tenants outside the top N is no tenant's name: a tenant called "other"
    among the top keeps series of its own."""
    settings = settings.model_copy(update={"metrics_top_tenants": 1})
    spec = ThumbnailSpec(width=32, height=32)
    waiting = [job("other", spec).model_copy(update={"cost": 1000}) for _ in range(2)] + [job("small", spec)]
    await queue.ensure_group(parts.redis, settings)
    async with parts.redis.pipeline(transaction=False) as pipe:
        await jobkeys.publish(pipe, settings, waiting)
        await pipe.execute()
    await schedule.park(parts.redis, settings)
    top = TopTenants(settings)
    found = await tenant_metrics.queued(parts.redis, settings, top)
    assert {label: each.jobs for label, each in found.items()} == {"other": 2, OTHER: 1}
    assert top.label("other") != top.label("small")


def test_no_tenant_can_be_named_like_the_label_of_the_others() -> None:
    assert re.fullmatch(TENANT_PATTERN, OTHER) is None
