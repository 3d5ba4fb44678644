"""imgflow-operator end to end: a real kube-apiserver, Redis, MongoDB-wire server and worker
processes; the operator runs as its console script under its own ServiceAccount and the chart's
Role for it (templates/operator-rbac.yaml, rendered by ``helm template``; nothing cluster-scoped),
so anything it does beyond that fails here as it would in a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from imgflow.core import quota
from imgflow.core.jobs import JobStatus, thumbnail_key
from imgflow.core.outputs import OutputFormat
from imgflow.core.settings import Settings
from imgflow.core.storage import make_storage
from imgflow.core.store import JobStore, connect
from imgflow.core.watermarks import Watermark, WatermarkStore
from imgflow.harness import images
from imgflow.harness.client import api_client, make_key, submit, wait_finished
from imgflow.harness.kube import Kube
from imgflow.harness.operator import (
    OperatorProcess,
    events_for,
    operator_kubeconfig,
    start_operator,
    worker_deployment,
)
from imgflow.operator.imagejob import recorded_sources
from imgflow.operator.settings import OperatorSettings
from tests.conftest import Processes, Workers

WAIT = "120s"  # only stops a hung test


# --- fixtures and helpers -------------------------------------------------------------------------


@dataclass
class Images:
    """A loopback HTTP server for source images; each response can be held back ``delay`` seconds."""

    base: str
    requests: list[str]

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"


@contextlib.contextmanager
def serve_images(body: bytes, delay: float = 0.0) -> Iterator[Images]:
    seen: list[str] = []
    closing = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.path)
            if self.path.startswith("/missing"):
                self.send_error(404)
                return
            closing.wait(delay)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            with contextlib.suppress(OSError):  # a stopped worker no longer listens
                self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Images(f"http://127.0.0.1:{server.server_address[1]}", seen)
    finally:
        closing.set()
        server.shutdown()
        server.server_close()


def operator_settings(base: Settings, namespace: str, **overrides: Any) -> OperatorSettings:
    values = {**base.model_dump(), "operator_namespace": namespace, **overrides}
    return OperatorSettings.model_validate(values)


@dataclass
class OperatorRun:
    """Starts the operator (as often as a test likes) under its ServiceAccount in the test namespace."""

    kube: Kube
    namespace: str
    kubeconfig: Path
    logs: Path
    started: list[OperatorProcess]
    expected_refusals: list[str]  # log text of refusals a test provokes on purpose

    def start(self, settings: OperatorSettings, **extra_env: str) -> OperatorProcess:
        log = self.logs / f"operator-{len(self.started)}.log"
        process = start_operator(settings, self.kubeconfig, log, **extra_env)
        self.started.append(process)
        return process

    def logs_text(self) -> str:
        return "\n".join(p.log() for p in self.started)


@pytest.fixture
def operator(kube: Kube, namespace: str, tmp_path: Path) -> Iterator[OperatorRun]:
    kubeconfig = operator_kubeconfig(
        kube.kubectl, kube.kubeconfig, namespace, tmp_path / "operator.kubeconfig"
    )
    run = OperatorRun(kube, namespace, kubeconfig, tmp_path / "logs", [], [])
    yield run
    for process in run.started:
        process.server.terminate()
    # Least privilege held: nothing the operator tried was refused (unless the test meant it).
    refused = [
        line
        for line in run.logs_text().splitlines()
        if "forbidden" in line.lower() and not any(ok in line for ok in run.expected_refusals)
    ]
    assert not refused, "\n".join(refused)


def image_job(name: str, user: str, sources: list[dict[str, str]], **spec: Any) -> str:
    return json.dumps(
        {
            "apiVersion": "imgflow.io/v1alpha1",
            "kind": "ImageJob",
            "metadata": {"name": name},
            "spec": {"userId": user, "sources": sources, **spec},
        }
    )


def create(kube: Kube, namespace: str, manifest: str) -> None:
    kube.kubectl("create", "-n", namespace, "-f", "-", input=manifest)


def get_image_job(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    found: dict[str, Any] = kube.kubectl_json("get", "imagejob", name, "-n", namespace)
    return found


async def wait_phase(kube: Kube, namespace: str, name: str, phase: str) -> dict[str, Any]:
    await asyncio.to_thread(
        kube.kubectl,
        "wait",
        f"imagejob/{name}",
        "-n",
        namespace,
        f"--for=jsonpath={{.status.phase}}={phase}",
        f"--timeout={WAIT}",
        timeout=150,
    )
    return get_image_job(kube, namespace, name)


@contextlib.asynccontextmanager
async def job_store(settings: Settings) -> AsyncIterator[tuple[JobStore, Any]]:
    client = connect(settings)
    db = client[settings.mongodb_database]
    try:
        yield JobStore(db), make_storage(settings, db)
    finally:
        await client.close()


def reasons(events: list[dict[str, Any]]) -> list[str]:
    return [e["reason"] for e in events]


# --- (a) a batch of URLs ends Succeeded ------------------------------------------------------------


async def test_image_job_of_urls_succeeds(
    kube: Kube, namespace: str, operator: OperatorRun, fresh_settings: Settings, workers: Workers
) -> None:
    settings = operator_settings(fresh_settings, namespace, allow_private_urls=True)
    workers.start(settings)
    process = operator.start(settings)
    n = 5
    with serve_images(images.jpeg(400, 300)) as source:
        sources = [{"url": source.url(f"photo-{i}.jpg")} for i in range(n)]
        thumbnail = {"width": 64, "height": 48, "fit": "inside", "format": "webp"}
        manifest = image_job("holiday", "alice", sources, operations={"thumbnail": thumbnail})
        create(kube, namespace, manifest)
        done = await wait_phase(kube, namespace, "holiday", "Succeeded")

    status = done["status"]
    assert (status["total"], status["succeeded"], status["failed"], status["progress"]) == (
        n,
        n,
        0,
        f"{n}/{n}",
    )
    assert status["observedGeneration"] == 1
    assert status["startedAt"] <= status["finishedAt"]
    assert [s["index"] for s in status["sources"]] == list(range(n))
    assert all(s["status"] == "completed" for s in status["sources"])
    assert [s["source"] for s in status["sources"]] == [s["url"] for s in sources]
    (condition,) = status["conditions"]
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "Complete",
        "True",
        "AllSucceeded",
    )

    job_ids = [s["jobId"] for s in status["sources"]]
    assert len(set(job_ids)) == n
    async with job_store(settings) as (store, storage):
        jobs = await store.for_image_job(f"{namespace}/holiday")
        assert sorted(j.job_id for j in jobs) == sorted(job_ids)
        for job in jobs:
            assert job.status is JobStatus.completed
            assert job.user_id == "alice"
            assert job.spec.format is OutputFormat.webp
            assert job.result is not None and job.result.width <= 64 and job.result.height <= 48
            stored = await storage.stat(thumbnail_key(job.job_id, OutputFormat.webp))
            assert stored.size == job.result.bytes

    events = events_for(kube.kubectl, namespace, "ImageJob", "holiday")
    assert "Submitted" in reasons(events)
    assert "Succeeded" in reasons(events)
    assert any(e["message"] == f"Submitted {n} of {n} sources as jobs." for e in events)

    async with httpx.AsyncClient() as client:
        health = await client.get(process.health_url)
    assert health.status_code == 200
    assert "seconds_since_last_tick" in health.json()["autoscaler"]

    table = kube.kubectl("get", "imagejobs", "-n", namespace).stdout
    header, row = table.strip().splitlines()
    assert header.split() == ["NAME", "PHASE", "SUCCEEDED", "FAILED", "AGE"]
    assert row.split()[:4] == ["holiday", "Succeeded", f"{n}/{n}", "0"]


async def test_image_job_variants_with_a_watermark_and_a_preset(
    kube: Kube, namespace: str, operator: OperatorRun, fresh_settings: Settings, workers: Workers
) -> None:
    """operations.variants (one with the tenant's watermark) and operations.preset reach the
    jobs; an unknown preset or another tenant's watermark refuses every source, saying why."""
    settings = operator_settings(fresh_settings, namespace, allow_private_urls=True)
    workers.start(settings)
    operator.start(settings)
    mark = Watermark(tenant=settings.default_tenant, width=40, height=20, bytes=0)
    foreign = Watermark(tenant="someone-else", width=40, height=20, bytes=0)
    async with job_store(settings) as (store, storage):
        client = connect(settings)
        try:
            marks = WatermarkStore(client[settings.mongodb_database])
            for record in (mark, foreign):
                await marks.insert(record)
                await storage.save_bytes(record.key, images.png_alpha(40, 20), "image/png")
        finally:
            await client.close()
    variants = [
        {"name": "small", "width": 64, "height": 48, "format": "webp"},
        {"name": "marked", "width": 200, "height": 150, "format": "png", "watermark": mark.watermark_id},
    ]
    # 800x600: the card preset's card@2x is that large, and outputs are not enlarged
    with serve_images(images.jpeg(800, 600)) as source:
        sources = [{"url": source.url(f"photo-{i}.jpg")} for i in range(2)]
        for name, operations in (
            ("sizes", {"variants": variants}),
            ("cards", {"preset": "card"}),
            ("posters", {"preset": "poster"}),
            ("stolen", {"variants": [{"name": "x", "watermark": foreign.watermark_id}]}),
        ):
            create(kube, namespace, image_job(name, "alice", sources, operations=operations))
        sizes = await wait_phase(kube, namespace, "sizes", "Succeeded")
        cards = await wait_phase(kube, namespace, "cards", "Succeeded")
        posters = await wait_phase(kube, namespace, "posters", "Failed")
        stolen = await wait_phase(kube, namespace, "stolen", "Failed")
    async with job_store(settings) as (store, _):
        for job_id in (s["jobId"] for s in sizes["status"]["sources"]):
            job = await store.get(job_id)
            assert job is not None and job.result is not None
            made = {v.name: (v.width, v.height, v.format.value) for v in job.result.variants}
            assert made == {"small": (64, 48, "webp"), "marked": (200, 150, "png")}
            assert job.variants[1].watermark == mark.watermark_id
        for job_id in (s["jobId"] for s in cards["status"]["sources"]):
            job = await store.get(job_id)
            assert job is not None and job.preset == "card" and job.result is not None
            assert [(v.name, v.width, v.height) for v in job.result.variants] == [
                ("card", 400, 300),
                ("card@2x", 800, 600),
            ]
    assert (
        "operations.preset must be one of the service's presets" in posters["status"]["sources"][0]["error"]
    )
    assert "there is no watermark" in stolen["status"]["sources"][0]["error"]


# --- (b) refused sources: private addresses and other users' uploads ------------------------------


async def test_private_addresses_and_foreign_uploads_are_refused(
    kube: Kube, namespace: str, operator: OperatorRun, fresh_settings: Settings, processes: Processes
) -> None:
    settings = operator_settings(fresh_settings, namespace)  # default: private URLs refused
    assert not settings.allow_private_urls
    processes.start_worker(settings)
    _, base_url = processes.start_api(settings)
    async with api_client(base_url, timeout=30) as client:
        mine = (await submit(client, images.jpeg(), user_id="bob")).json()["jobId"]
        theirs = (await submit(client, images.jpeg(), user_id="mallory")).json()["jobId"]
    operator.start(settings)

    with serve_images(images.jpeg()) as source:
        sources = [
            {"uploadId": mine},
            {"url": source.url("inside.jpg")},
            {"url": "http://169.254.169.254/latest/meta-data/iam/"},
            {"url": "http://[::1]:8080/x.jpg"},
            {"uploadId": theirs},
        ]
        create(kube, namespace, image_job("mixed", "bob", sources))
        done = await wait_phase(kube, namespace, "mixed", "Failed")
        assert source.requests == []  # nothing was fetched from the private address

    status = done["status"]
    assert (status["total"], status["succeeded"], status["failed"], status["progress"]) == (5, 1, 4, "1/5")
    by_index = {s["index"]: s for s in status["sources"]}
    assert by_index[0]["status"] == "completed" and by_index[0]["jobId"]
    refused = {i: by_index[i] for i in (1, 2, 3, 4)}
    assert all(s["status"] == "failed" and "jobId" not in s for s in refused.values())
    assert "127.0.0.1 is a loopback address" in refused[1]["error"]
    assert "169.254.169.254 is the cloud metadata service address" in refused[2]["error"]
    assert "::1 is a loopback address" in refused[3]["error"]
    assert "IMGFLOW_ALLOW_PRIVATE_URLS" in refused[1]["error"]
    assert f"Upload {theirs} was not found for user 'bob' of tenant 'default'" in refused[4]["error"]
    (condition,) = status["conditions"]
    assert (condition["type"], condition["reason"]) == ("Failed", "SourcesFailed")
    assert condition["message"].startswith("4 of 5 sources failed. First: source 1")

    events = events_for(kube.kubectl, namespace, "ImageJob", "mixed")
    assert reasons(events).count("SourceRefused") == 4
    assert any(e["message"] == "Submitted 1 of 5 sources as jobs; 4 refused." for e in events)
    assert "Failed" in reasons(events)
    async with job_store(settings) as (store, _):
        jobs = await store.for_image_job(f"{namespace}/mixed")
        assert [j.job_id for j in jobs] == [by_index[0]["jobId"]]  # refused sources made no job
        assert jobs[0].tenant == settings.default_tenant  # the spec names no tenant

    # its spec cannot name another tenant (to reach that tenant's uploads, say): refused, saying why
    create(kube, namespace, image_job("elsewhere", "bob", [{"uploadId": mine}], tenant="acme"))
    elsewhere = (await wait_phase(kube, namespace, "elsewhere", "Failed"))["status"]["sources"][0]
    assert f"spec.tenant 'acme' is not the tenant of namespace '{namespace}'" in elsewhere["error"]


# --- tenants: an ImageJob acts for its namespace's, within its cap, on its own files ----------------


async def test_image_jobs_act_for_their_namespaces_tenant_within_its_cap(
    kube: Kube, namespace: str, operator: OperatorRun, fresh_settings: Settings, workers: Workers
) -> None:
    """The namespace's tenant (the operator's allow-list), never the one a spec names; its sources
    take places among that tenant's unfinished jobs, and wait while it is at its cap."""
    settings = operator_settings(
        fresh_settings,
        namespace,
        allow_private_urls=True,
        namespace_tenants={namespace: "acme"},
        tenant_max_unfinished=2,
    )
    operator.start(settings)  # no worker yet: the first two jobs stay unfinished
    redis = Redis.from_url(settings.redis_url)
    try:
        with serve_images(images.jpeg()) as source:
            sources = [{"url": source.url(f"{i}.jpg")} for i in range(3)]
            create(kube, namespace, image_job("capped", "gus", sources))
            create(kube, namespace, image_job("posing", "gus", sources[:1], tenant="globex"))
            posing = (await wait_phase(kube, namespace, "posing", "Failed"))["status"]["sources"][0]
            assert f"spec.tenant 'globex' is not the tenant of namespace '{namespace}'" in posing["error"]
            assert "jobId" not in posing

            async with asyncio.timeout(120):
                while len(recorded_sources(get_image_job(kube, namespace, "capped").get("status", {}))) < 2:  # noqa: ASYNC110 (polling a server)
                    await asyncio.sleep(0.2)
            async with job_store(settings) as (store, _):
                jobs = await store.for_image_job(f"{namespace}/capped")
            assert [job.tenant for job in jobs] == ["acme", "acme"]  # the third waits for a place
            assert await quota.count(redis, settings, "acme") == 2
            assert await quota.count(redis, settings, "globex") == 0
            running = get_image_job(kube, namespace, "capped")["status"]
            assert (running["phase"], running["total"], running["progress"]) == ("Running", 3, "0/3")
            assert "Waiting" in reasons(events_for(kube.kubectl, namespace, "ImageJob", "capped"))

            workers.start(settings)  # places free as jobs finish: the third is submitted
            done = (await wait_phase(kube, namespace, "capped", "Succeeded"))["status"]
        assert (done["total"], done["succeeded"]) == (3, 3)
        async with job_store(settings) as (store, _):
            jobs = await store.for_image_job(f"{namespace}/capped")
        assert sorted(job.tenant for job in jobs) == ["acme"] * 3
        assert await quota.count(redis, settings, "acme") == 0
    finally:
        await redis.aclose()


async def test_an_image_jobs_ttl_leaves_the_upload_it_borrowed(
    kube: Kube, namespace: str, operator: OperatorRun, fresh_settings: Settings, processes: Processes
) -> None:
    """Deleting a finished ImageJob with its jobs (ttlSecondsAfterFinished) deletes their files,
    not the original of the upload a source named: that stays until the upload's own job expires."""
    settings = operator_settings(fresh_settings, namespace, namespace_tenants={namespace: "acme"})
    processes.start_worker(settings)
    _, base_url = processes.start_api(settings)
    async with api_client(base_url, timeout=30) as admin:
        key = await make_key(admin, "acme", "jobs:read", "jobs:write")
    async with api_client(base_url, key=key, timeout=30) as client:
        upload = (await submit(client, images.jpeg(), user_id="hal")).json()["jobId"]
        assert (await wait_finished(client, upload))["status"] == "completed"
        operator.start(settings)
        sources = [{"uploadId": upload}]
        manifest = image_job("borrowing", "hal", sources, tenant="acme", ttlSecondsAfterFinished=1)
        create(kube, namespace, manifest)
        await asyncio.to_thread(
            kube.kubectl,
            "wait",
            "imagejob/borrowing",
            "-n",
            namespace,
            "--for=delete",
            f"--timeout={WAIT}",
            timeout=150,
        )
        assert (await client.get(f"/api/image-processing/jobs/{upload}")).status_code == 200
    assert "Succeeded" in reasons(events_for(kube.kubectl, namespace, "ImageJob", "borrowing"))
    async with job_store(settings) as (store, storage):
        assert await store.for_image_job(f"{namespace}/borrowing") == []
        kept = [key async for key, _ in storage.entries()]
    assert f"original-{upload}" in kept
    assert [k for k in kept if k.startswith("thumbnail-")] == [f"thumbnail-{upload}.jpg"]


# --- restarts: no source is submitted twice --------------------------------------------------------


async def test_an_operator_restart_submits_nothing_twice(
    kube: Kube, namespace: str, operator: OperatorRun, fresh_settings: Settings, workers: Workers
) -> None:
    settings = operator_settings(fresh_settings, namespace, allow_private_urls=True)
    first = operator.start(settings)
    with serve_images(images.jpeg()) as source:
        sources = [{"url": source.url(f"p{i}.jpg")} for i in range(4)]
        create(kube, namespace, image_job("again", "carol", sources))
        running = await wait_phase(kube, namespace, "again", "Running")  # no worker yet: it stays so
        job_ids = [s["jobId"] for s in running["status"]["sources"]]
        first.server.kill()

        # As if the operator had died after submitting but before recording: status forgets the jobs.
        forget = json.dumps([{"op": "remove", "path": "/status/sources"}])
        kube.kubectl(
            "patch", "imagejob", "again", "-n", namespace, "--subresource=status", "--type=json", "-p", forget
        )
        operator.start(settings)
        await asyncio.to_thread(
            kube.kubectl,
            "wait",
            "imagejob/again",
            "-n",
            namespace,
            "--for=jsonpath={.status.sources[3].jobId}",
            f"--timeout={WAIT}",
            timeout=150,
        )
        workers.start(settings)
        done = await wait_phase(kube, namespace, "again", "Succeeded")

    assert [s["jobId"] for s in done["status"]["sources"]] == job_ids
    async with job_store(settings) as (store, _):
        assert len(await store.for_image_job(f"{namespace}/again")) == 4
    redis = Redis.from_url(settings.redis_url)
    try:
        assert await redis.xlen(settings.stream) == 4  # one message per source, not one per pass
    finally:
        await redis.aclose()


async def test_ttl_deletes_a_finished_image_job_with_its_jobs(
    kube: Kube, namespace: str, operator: OperatorRun, fresh_settings: Settings, workers: Workers
) -> None:
    settings = operator_settings(fresh_settings, namespace, allow_private_urls=True)
    workers.start(settings)
    operator.start(settings)
    with serve_images(images.jpeg()) as source:
        manifest = image_job("brief", "dave", [{"url": source.url("a.jpg")}], ttlSecondsAfterFinished=1)
        create(kube, namespace, manifest)
        await asyncio.to_thread(
            kube.kubectl,
            "wait",
            "imagejob/brief",
            "-n",
            namespace,
            "--for=delete",
            f"--timeout={WAIT}",
            timeout=150,
        )
    async with job_store(settings) as (store, storage):
        # the imgflow jobs it created, and their thumbnails, went with it
        assert await store.for_image_job(f"{namespace}/brief") == []
        assert [key async for key, _ in storage.entries()] == []


async def test_deleting_an_unfinished_image_job_cancels_its_jobs(
    kube: Kube, namespace: str, operator: OperatorRun, fresh_settings: Settings
) -> None:
    settings = operator_settings(fresh_settings, namespace, allow_private_urls=True)
    operator.start(settings)  # no worker: its jobs stay pending
    with serve_images(images.jpeg()) as source:
        sources = [{"url": source.url(f"{i}.jpg")} for i in range(3)]
        create(kube, namespace, image_job("dropped", "erin", sources))
        running = await wait_phase(kube, namespace, "dropped", "Running")
    assert [s["status"] for s in running["status"]["sources"]] == ["pending"] * 3
    await asyncio.to_thread(
        kube.kubectl, "delete", "imagejob", "dropped", "-n", namespace, f"--timeout={WAIT}", timeout=150
    )
    async with job_store(settings) as (store, _):
        jobs = await store.for_image_job(f"{namespace}/dropped")
    assert sorted(j.job_id for j in jobs) == sorted(s["jobId"] for s in running["status"]["sources"])
    assert [j.status for j in jobs] == [JobStatus.cancelled] * 3


async def test_a_job_cancelled_through_the_api_fails_its_image_job(
    kube: Kube, namespace: str, operator: OperatorRun, fresh_settings: Settings, processes: Processes
) -> None:
    settings = operator_settings(fresh_settings, namespace, allow_private_urls=True)
    _, base = processes.start_api(settings)
    operator.start(settings)  # no worker: its job stays pending
    with serve_images(images.jpeg()) as source:
        create(kube, namespace, image_job("halted", "fay", [{"url": source.url("a.jpg")}]))
        running = await wait_phase(kube, namespace, "halted", "Running")
    [item] = running["status"]["sources"]
    async with api_client(base, timeout=30) as admin:
        reply = await admin.delete(f"/api/image-processing/jobs/{item['jobId']}")
    assert reply.status_code == 200, reply.text
    failed = await wait_phase(kube, namespace, "halted", "Failed")
    assert [s["status"] for s in failed["status"]["sources"]] == ["cancelled"]
    assert failed["status"]["conditions"][0]["message"].endswith(": cancelled")


# --- (c) autoscaling end to end --------------------------------------------------------------------


async def test_a_deployment_it_may_not_scale_gets_a_warning_not_a_crash(
    kube: Kube, namespace: str, operator: OperatorRun, fresh_settings: Settings
) -> None:
    settings = operator_settings(fresh_settings, namespace)
    other = worker_deployment(
        {"imgflow.io/min-replicas": "2", "imgflow.io/max-replicas": "nine"}, 1, name="other"
    )
    create(kube, namespace, json.dumps(other))
    operator.start(settings)
    deadline = time.monotonic() + 60
    while not {"ScaleFailed", "InvalidAutoscaling"} <= set(
        reasons(events_for(kube.kubectl, namespace, "Deployment", "other"))
    ):
        assert time.monotonic() < deadline, "no warning events"
        await asyncio.sleep(0.2)
    events = events_for(kube.kubectl, namespace, "Deployment", "other")
    invalid = next(e for e in events if e["reason"] == "InvalidAutoscaling")
    assert "imgflow.io/max-replicas='nine' is not a whole number" in invalid["message"]
    assert kube.kubectl_json("get", "deployment", "other", "-n", namespace)["spec"]["replicas"] == 1
    assert "scaling to 2 failed: Forbidden" in operator.logs_text()
    operator.expected_refusals.append("scaling to 2 failed: Forbidden")
