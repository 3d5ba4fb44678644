"""Per-tenant metrics keep a bounded label set (imgflow.core.tenant_metrics): the tenants that
brought the most work by name, all others as "other". The API's /metrics reports what waits in the
tenants' lanes (jobs, cost, the oldest job's wait) even with 10,000 tenants waiting; a worker's
cost served and wait time are labelled the same way. Real Redis, MongoDB, API and worker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from imgflow.core import cost, jobkeys, lifecycle, queue, schedule, tenant_metrics
from imgflow.core.jobs import Job, UploadSource
from imgflow.core.outputs import OutputFormat, ThumbnailSpec
from imgflow.core.settings import Settings, StorageBackend
from imgflow.core.storage import make_storage
from imgflow.core.store import JobStore, connect
from imgflow.core.tenant_metrics import OTHER, TopTenants
from imgflow.harness import images
from imgflow.harness.client import Parts
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


async def test_ten_thousand_waiting_tenants_make_n_plus_one_series(
    processes: Processes, settings: Settings, parts: Parts
) -> None:
    total_cost = await queue_many_tenants(parts)
    _, base = processes.start_api(settings)
    found = await scrape(f"{base}/metrics")
    top = {f"t{i:05d}" for i in range(TENANTS - settings.metrics_top_tenants, TENANTS)}
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
    _, base = processes.start_api(settings)
    waiting = await scrape(f"{base}/metrics")  # before a worker runs: all of it waits
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
    assert after["imgflow_tenant_queued_jobs"] == {OTHER: 0}  # nothing waits; "other" stays


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
