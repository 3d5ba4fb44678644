"""Upgrades under load: ``helm upgrade`` to new API and worker image tags while clients submit jobs
through the API Service and followers stream their jobs' progress (Server-Sent Events); what the
clients saw and what the rollout kept.

The load is imgflow.harness.node_faults' (clients in the node's network namespace, one
``Idempotency-Key`` per job, retrying on connection errors, 409, 429 and 502-504), paced to a
steady rate. Each follower submits a job of seconds (``node_faults.LONG_JOB``) the same way and
follows its ``/events`` to the end; a stream that ends or is cut before the job's end is opened
again with ``Last-Event-ID`` (on whichever replica the Service picks), until the rollout is over.
A probe opens a new connection to the Service every few ms. Meanwhile a watcher samples, twice a
second, the API pods Ready and not being deleted, the API PodDisruptionBudget's
``desiredHealthy``, and the worker Deployment's ``spec.replicas`` with who last wrote it (its
managed fields).

Counted at the end: answers 5xx (uploads, event streams, probes), connections refused, other
cut connections, client-visible errors, accepted jobs lost, accepted twice, completed twice; per
follower the streams opened and resumed, and whether its event ids (checked against the job's
change stream in Redis) rose without a repeat and ended on the job's last change.

Used by tests/node/test_upgrade_under_load.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import redis

from imgflow.harness import images, node_faults
from imgflow.harness.autoscale import kubectl, pods

FINAL = {"completed", "failed", "cancelled"}


def retag(release: node_faults.Release, ref: str, suffix: str) -> str:
    """``ref`` under a new tag in the node's containerd: the same content, a new reference, which
    is what a rebuild with a trivial change gives ``helm upgrade`` (the pods roll); the new tag."""
    new = f"{ref}-{suffix}"
    sock = release.cluster_dir / "node" / "containerd.sock"
    subprocess.run(
        ["ctr", "--address", str(sock), "-n", "k8s.io", "images", "tag", ref, new],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return new.rsplit(":", 1)[1]


def image_of(release: node_faults.Release, component: str) -> str:
    """The image the component's Deployment runs now."""
    d = release.get("deployment", component)
    image: str = d["spec"]["template"]["spec"]["containers"][0]["image"]
    return image


@dataclass
class Followed:
    """One job followed: the events received (id, status) over all its streams, in order."""

    job_id: str
    events: list[tuple[str, str]] = field(default_factory=list)
    streams: int = 0
    resumed: int = 0  # streams opened with Last-Event-ID
    cuts: collections.Counter[str] = field(default_factory=collections.Counter)  # why a stream ended early


@dataclass
class Followers:
    load: node_faults.Load  # the followers' own submissions
    stop: threading.Event = field(default_factory=threading.Event)
    followed: list[Followed] = field(default_factory=list)
    answers: collections.Counter[int] = field(default_factory=collections.Counter)  # of the streams
    # what new connections got, one at a time (``probe``): answers by status, errors by name
    connections: collections.Counter[str] = field(default_factory=collections.Counter)


async def follow(client: httpx.AsyncClient, f: Followed, answers: collections.Counter[int]) -> None:
    """Stream the job's events until its final status, resuming after the last event received."""
    deadline = time.monotonic() + node_faults.RETRY_FOR_S
    while time.monotonic() < deadline:
        headers = {"Last-Event-ID": f.events[-1][0]} if f.events else {}
        f.streams += 1
        f.resumed += bool(headers)
        try:
            async with client.stream(
                "GET", f"/api/image-processing/jobs/{f.job_id}/events", headers=headers
            ) as reply:
                answers[reply.status_code] += 1
                if reply.status_code == 200:
                    event_id, data = "", ""
                    async for line in reply.aiter_lines():
                        if line.startswith("id: "):
                            event_id = line[4:]
                        elif line.startswith("data: "):
                            data = line[6:]
                        elif not line and data:
                            f.events.append((event_id, json.loads(data)["status"]))
                            event_id, data = "", ""
                    if f.events and f.events[-1][1] in FINAL:
                        return
                    f.cuts["ended before the job"] += 1
                else:
                    f.cuts[str(reply.status_code)] += 1
        except httpx.TransportError as exc:
            f.cuts[type(exc).__name__] += 1
        await asyncio.sleep(0.2)


async def probe(url: str, followers: Followers) -> None:
    """A new connection to the API Service every few ms (``GET /healthz``, no keep-alive) until
    ``followers.stop``: a pod that stops listening while the Service still routes to it refuses some
    (the clients' pooled connections only meet that when they reconnect)."""
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(10, connect=5), limits=limits) as client:
        while not followers.stop.is_set():
            try:
                followers.connections[str((await client.get("/healthz")).status_code)] += 1
            except httpx.TransportError as exc:
                followers.connections[type(exc).__name__] += 1
            await asyncio.sleep(0.02)


def start_followers(
    release: node_faults.Release, followers: Followers, user_id: str, count: int
) -> threading.Thread:
    """``count`` followers and a ``probe`` in a thread inside the node's network namespace: each
    follower submits a job, follows it to its end, and again, until ``followers.stop``."""
    photo = images.jpeg(int(node_faults.LONG_JOB["width"]), int(node_faults.LONG_JOB["height"]))

    async def one(client: httpx.AsyncClient) -> None:
        load = followers.load
        while not followers.stop.is_set():
            n = load.started
            load.started += 1
            await node_faults.submit_with_retries(client, load, n, user_id, photo, node_faults.LONG_JOB)
            if n in load.accepted:
                f = Followed(load.accepted[n])
                followers.followed.append(f)
                await follow(client, f, followers.answers)

    async def work(client: httpx.AsyncClient) -> None:
        await asyncio.gather(*(one(client) for _ in range(count)), probe(str(client.base_url), followers))

    return node_faults.start_in_node(release, followers.load, "upgrade-followers", work)


def pace(load: node_faults.Load, per_s: float, stop: threading.Event) -> threading.Thread:
    """Let the load's clients start ``per_s`` jobs a second (a steady load, not a flood that the
    workers would take minutes to drain) until ``stop``."""

    def run() -> None:
        while not stop.wait(1 / per_s):
            # no credit piles up while the API is slow: a stall is not followed by a burst
            load.allowance = min(load.allowance + 1, load.started + int(per_s) + 1)

    thread = threading.Thread(target=run, name="upgrade-pace", daemon=True)
    thread.start()
    return thread


@dataclass
class Sample:
    at: float
    api_ready: int  # API pods Ready and not being deleted
    api_desired_healthy: int  # the API PodDisruptionBudget's status.desiredHealthy
    worker_replicas: int
    replicas_set_by: list[str]  # the managers of the worker Deployment's spec.replicas


def sample(release: node_faults.Release) -> Sample:
    api = pods(release.kubeconfig, release.namespace, "api")
    ready = [
        p
        for p in api
        if not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    ]
    pdb = release.get("pdb", "api")
    worker = json.loads(
        kubectl(
            release.kubeconfig,
            "get",
            "deployment",
            f"{release.name}-worker",
            "-n",
            release.namespace,
            "--show-managed-fields",
            "-o",
            "json",
        )
    )
    managers = sorted(
        m["manager"]
        for m in worker["metadata"].get("managedFields", [])
        if "f:replicas" in m.get("fieldsV1", {}).get("f:spec", {})
    )
    return Sample(
        time.time(),
        len(ready),
        pdb.get("status", {}).get("desiredHealthy", 0),
        worker["spec"].get("replicas", 0),
        managers,
    )


class Watch:
    """Samples (``sample``) twice a second in a thread until ``stop``; a failed read is counted."""

    def __init__(self, release: node_faults.Release) -> None:
        self.release = release
        self.samples: list[Sample] = []
        self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="upgrade-watch", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append(sample(self.release))
            except Exception:
                self.failed += 1
            self.stop.wait(0.5)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


def change_ids(release: node_faults.Release, job_ids: list[str]) -> dict[str, list[str]]:
    """Each job's change ids as kept in Redis (its events stream, read from the Redis pod)."""
    running = [
        p
        for p in pods(release.kubeconfig, release.namespace, "redis")
        if p["status"].get("phase") == "Running"
    ]
    config = release.get("configmap", "config")
    stream = config["data"].get("IMGFLOW_STREAM", "imgflow:jobs")
    client = redis.Redis(
        host=running[0]["status"]["podIP"], port=6379, socket_timeout=10, decode_responses=True
    )
    try:
        kept: dict[str, list[str]] = {}
        for job in job_ids:
            entries: Any = client.xrange(f"{stream}:events:{job}")
            kept[job] = [str(entry_id) for entry_id, _ in entries]
        return kept
    finally:
        client.close()


def order(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq or 0)


def stream_problems(f: Followed, kept: list[str]) -> list[str]:
    """What is wrong with what the follower received, against the job's changes kept in Redis: an
    event id repeated or going back (a resume that sent again), one Redis never had, or a last
    event that is not the job's last change with a final status (a change missed)."""
    problems = []
    ids = [event_id for event_id, _ in f.events]
    for before, after in itertools.pairwise(ids):
        if order(after) <= order(before):
            problems.append(f"event {after} after {before}")
    problems += [f"event {i} not a change of the job" for i in ids if i not in kept]
    if not f.events or f.events[-1][1] not in FINAL:
        problems.append(f"no final status: {f.events[-1:]}")
    elif kept and ids[-1] != kept[-1]:
        problems.append(f"last event {ids[-1]}, last change {kept[-1]}")
    return problems


def run(
    release: node_faults.Release,
    upgrade: Callable[[], None],
    *,
    clients: int = 2,
    per_s: float = 2.0,
    followers: int = 4,
    min_workers: int = 2,
    drain_within: float = 600.0,
) -> dict[str, Any]:
    """The scenario: the load and the followers start, the operator has the workers at
    ``min_workers`` or more, then ``upgrade()`` runs (it returns once the rollout is done), the load
    stops and the release drains; the figures."""
    user_id = f"upgrade-{uuid.uuid4().hex[:8]}"
    load = node_faults.Load(jobs=1_000_000, allowance=0)
    follow_load = node_faults.Load(jobs=1_000_000, allowance=1_000_000)
    following = Followers(follow_load)
    watchers = [node_faults.Watcher(release, user_id), node_faults.Watcher(release, f"{user_id}-follow")]
    stop_pacing = threading.Event()
    pacer = pace(load, per_s, stop_pacing)
    clients_thread = node_faults.start_load(release, load, user_id, clients)
    followers_thread = start_followers(release, following, f"{user_id}-follow", followers)
    watch: Watch | None = None
    try:
        if not node_faults.wait_for(lambda: len(load.accepted) >= 10 and following.followed, 300):
            raise AssertionError(f"the load did not start: {load.errors[:5]} {follow_load.errors[:5]}")

        def scaled() -> Sample | None:
            s = sample(release)
            return s if s.worker_replicas >= min_workers else None

        before: Sample | None = node_faults.wait_for(scaled, 300)
        if before is None:
            raise AssertionError(f"the operator did not have {min_workers} workers: {sample(release)}")
        watch = Watch(release)
        started = time.monotonic()
        upgrade()
        rollout_s = time.monotonic() - started
        time.sleep(5)  # the load runs on a little past the rollout
    finally:
        stop_pacing.set()
        pacer.join()
        load.jobs = load.allowance = load.started
        following.stop.set()
        if watch is not None:
            watch.close()
    clients_thread.join(node_faults.RETRY_FOR_S + 60)
    followers_thread.join(node_faults.RETRY_FOR_S + 60)
    accepted = list(load.accepted.values()) + list(follow_load.accepted.values())

    def drained() -> bool:
        left = release.jobs().count_documents(
            {"_id": {"$in": accepted}, "status": {"$in": ["pending", "processing"]}}
        )
        return left == 0

    drain_started = time.monotonic()
    node_faults.wait_for(drained, drain_within, every=1.0)
    drain_s = time.monotonic() - drain_started

    def records() -> dict[str, Any]:
        users = [user_id, f"{user_id}-follow"]
        return {d["_id"]: d for d in release.jobs().find({"user_id": {"$in": users}})}

    # a loaded node's database may take more than a read's time limit to answer: asked again
    docs: dict[str, Any] = node_faults.wait_for(records, 120, every=2.0) or {}
    for watcher in watchers:
        with contextlib.suppress(Exception):
            watcher.look()
        watcher.stop.set()
    kept = (
        node_faults.wait_for(lambda: change_ids(release, [f.job_id for f in following.followed]), 120) or {}
    )
    statuses = collections.Counter(docs[i]["status"] if i in docs else "lost" for i in accepted)
    retried = load.retried + follow_load.retried
    samples = watch.samples if watch is not None else []
    return {
        "rollout_s": round(rollout_s, 1),
        "accepted": len(accepted),
        "statuses": dict(statuses),
        "lost": statuses["lost"] + statuses["pending"] + statuses["processing"],
        "accepted_twice": len(set(docs) - set(accepted)),
        "completed_twice": sum(len(w.twice) for w in watchers),
        "redelivered": sum(1 for i in accepted if docs.get(i, {}).get("attempts", 0) > 1),
        "answered_5xx": {
            cause: n
            for cause, n in (
                retried + collections.Counter(map(str, following.answers)) + following.connections
            ).items()
            if cause.isdigit() and int(cause) >= 500
        }
        | {e: 1 for e in load.errors + follow_load.errors if e.split(": ", 1)[-1][:1] == "5"},
        "refused": retried["ConnectError"] + following.connections["ConnectError"],
        "connections": dict(following.connections),
        "retried": dict(retried),
        "client_errors": load.errors + follow_load.errors,
        "streams": dict(following.answers),
        "followed": len(following.followed),
        "resumed": sum(f.resumed for f in following.followed),
        "cuts": dict(sum((f.cuts for f in following.followed), collections.Counter[str]())),
        "stream_problems": {
            f.job_id: p for f in following.followed if (p := stream_problems(f, kept.get(f.job_id, [])))
        },
        "workers_before": before.worker_replicas,
        "replicas_set_by_before": before.replicas_set_by,
        "samples": len(samples),
        "sample_failures": watch.failed if watch is not None else None,
        "api_ready_min": min((s.api_ready for s in samples), default=None),
        "api_desired_healthy": sorted({s.api_desired_healthy for s in samples}),
        "budget_broken": [s.__dict__ for s in samples if s.api_ready < s.api_desired_healthy],
        "worker_replicas_seen": sorted({s.worker_replicas for s in samples}),
        "replicas_set_by_seen": sorted({m for s in samples for m in s.replicas_set_by}),
        "drain_s": round(drain_s, 1),
    }
