"""Kill anything, lose nothing: a steady load of jobs through a release's API Service on the local
node while its pods and the node's own processes are killed; what was lost, duplicated or refused.

The load: ``clients`` HTTP clients in the node's network namespace (reaching the API's ClusterIP
through kube-proxy's rules, as a pod would) post small photos, each job with its own
``Idempotency-Key``, and retry the same request on connection errors, 502-504, 503 and 409 (the
same key still being accepted), as a client of imgflow should, for up to ``RETRY_FOR_S``. What a
client still sees after that is a client-visible error.

The faults, one at a time, spread evenly over the jobs (the load holds back until the previous
fault is injected), each followed by a wait until what it took is back (the Deployment of the pod
killed Ready again; the node Ready) but not for the rest: faults overlap each other's recovery.

- ``worker``: force-delete (grace period 0) a worker pod while it holds a job;
- ``api``: force-delete an API pod while uploads are in flight;
- ``operator``: force-delete the operator pod while it scales the workers;
- ``redis``, ``mongodb``: force-delete the dev Redis's / MongoDB-wire server's pod;
- ``kubelet``, ``containerd``: stop the node's process (SIGTERM, as a service manager restarting
  it does; the containers keep running) and start it again with ``scripts/cluster.sh up``.

Counted at the end (from the database, read from the host through the pod network): accepted
jobs lost (no record, or unfinished once the release has drained), failed, accepted twice (a
record of the run's user no client was answered with), completed twice (a completed job whose
result changed later, as a watcher polling the database saw it), client-visible errors and the
time to drain after the last fault.

Used by tests/node/test_kill_anything.py (one fault of each kind) and ``python -m
bench.node_faults`` (the long run).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import ctypes
import json
import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pymongo

from imgflow.harness import images
from imgflow.harness.autoscale import kubectl, pods
from imgflow.harness.kube import cluster_sh

FAULTS = ("worker", "api", "operator", "redis", "mongodb", "kubelet", "containerd")
NODE_PROCESSES = ("kubelet", "containerd")
RETRY_FOR_S = 600.0  # how long a client keeps retrying one job before it counts an error
RETRYABLE = {409, 429, 502, 503, 504}
# A job that keeps a worker busy for seconds (an AVIF as large as the photo: about 2.5 s of one
# core here), so that the worker fault finds a pod holding a job; the small photos' jobs end
# within a poll of the database.
LONG_JOB = {"width": "1200", "height": "900", "format": "avif"}
CLONE_NEWNET = 0x40000000
# Values for the release of this scenario (on top of imgflow.harness.autoscale.AUTOSCALE_VALUES):
# two API pods, so that the Service keeps an endpoint while one is killed; uploads of at most
# 1 MiB, so that the Idempotency-Key of an upload whose API pod died is free again after its
# deadline (idle timeout + size at the slowest rate + 60 s: 86 s instead of 230 s).
FAULT_VALUES = ["--set", "api.replicas=2", "--set", "config.maxUploadBytes=1048576"]


@dataclass(frozen=True)
class Release:
    kubeconfig: Path
    namespace: str
    name: str

    @property
    def cluster_dir(self) -> Path:
        return self.kubeconfig.parent

    def get(self, kind: str, name: str) -> Any:
        """The release's object ``<release>-<name>`` of ``kind`` (deployment, configmap, ...), as
        the API server has it now."""
        return json.loads(
            kubectl(self.kubeconfig, "get", kind, f"{self.name}-{name}", "-n", self.namespace, "-o", "json")
        )

    def admin_key(self) -> str:
        secret = self.get("secret", "connections")
        return base64.b64decode(secret["data"]["admin-key"]).decode()

    def api_url(self) -> str:
        """The API Service's ClusterIP URL (reached from the node's network namespace)."""
        service = self.get("service", "api")
        return f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"

    def running(self, component: str) -> list[str]:
        """Names of the component's pods that run and are not being deleted."""
        return [
            p["metadata"]["name"]
            for p in pods(self.kubeconfig, self.namespace, component)
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]

    def jobs(self) -> pymongo.collection.Collection[dict[str, Any]]:
        """The jobs collection, on the MongoDB pod running now (from the host: it routes to pods)."""
        mongo = [
            p
            for p in pods(self.kubeconfig, self.namespace, "mongodb")
            if p["status"].get("phase") == "Running"
        ]
        if len(mongo) != 1 or not mongo[0]["status"].get("podIP"):
            raise ConnectionError(f"{len(mongo)} MongoDB pods running")
        config = self.get("configmap", "config")
        client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
            f"mongodb://{mongo[0]['status']['podIP']}:27017/",
            serverSelectionTimeoutMS=5000,
            connectTimeoutMS=5000,
            # a pod force-deleted mid-read never answers: without a limit the read would wait forever
            socketTimeoutMS=10_000,
        )
        return client[config["data"].get("IMGFLOW_MONGODB_DATABASE", "imgflow")]["jobs"]


@dataclass
class Load:
    """The clients' state, shared with the fault injector."""

    jobs: int
    allowance: int  # logical jobs the clients may start now
    started: int = 0
    accepted: dict[int, str] = field(default_factory=dict)  # logical job -> id answered
    errors: list[str] = field(default_factory=list)  # what clients saw after their retries
    retried: collections.Counter[str] = field(default_factory=collections.Counter)  # by cause
    in_flight: int = 0
    finished: threading.Event = field(default_factory=threading.Event)
    long_wanted: int = 0  # the next jobs started are long ones (``LONG_JOB``), for the worker fault


def enter_network_namespace(pid: int) -> None:
    """Move the calling thread (not the process) into the network namespace of ``pid``: the
    sockets it opens from now on are the node's."""
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/proc/{pid}/ns/net") as ns:
        if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns into the node's network namespace")


async def submit_with_retries(
    client: httpx.AsyncClient, load: Load, n: int, user_id: str, photo: bytes, options: dict[str, str]
) -> None:
    """One logical job: the same request under one Idempotency-Key until it is answered 202, a
    final refusal, or ``RETRY_FOR_S`` has passed."""
    headers = {"Idempotency-Key": f"node-faults-{user_id}-{n}"}
    data = {"userId": user_id, "reuse": "false", **options}
    deadline = time.monotonic() + RETRY_FOR_S
    pause = 0.2
    while True:
        load.in_flight += 1
        try:
            reply = await client.post(
                "/api/image-processing/jobs",
                files={"file": ("p.jpg", photo, "image/jpeg")},
                data=data,
                headers=headers,
            )
        except httpx.TransportError as exc:
            cause = type(exc).__name__
        else:
            if reply.status_code == 202:
                load.accepted[n] = reply.json()["jobId"]
                return
            if reply.status_code not in RETRYABLE:
                load.errors.append(f"job {n}: {reply.status_code} {reply.text[:200]}")
                return
            cause = str(reply.status_code)
        finally:
            load.in_flight -= 1
        load.retried[cause] += 1
        if time.monotonic() > deadline:
            load.errors.append(f"job {n}: still {cause} after {RETRY_FOR_S:.0f} s of retries")
            return
        await asyncio.sleep(pause)
        pause = min(pause * 2, 3.0)


async def run_load(client: httpx.AsyncClient, load: Load, user_id: str, clients: int) -> None:
    photos = [images.jpeg(w, h) for w, h in ((320, 240), (480, 360), (640, 480))]
    large = images.jpeg(int(LONG_JOB["width"]), int(LONG_JOB["height"]))

    async def client_loop(client: httpx.AsyncClient) -> None:
        while load.started < load.jobs:
            if load.started >= load.allowance:
                await asyncio.sleep(0.1)
                continue
            n = load.started
            load.started += 1
            if load.long_wanted > 0:
                load.long_wanted -= 1
                await submit_with_retries(client, load, n, user_id, large, LONG_JOB)
            else:
                await submit_with_retries(client, load, n, user_id, photos[n % len(photos)], {})

    await asyncio.gather(*(client_loop(client) for _ in range(clients)))


def start_in_node(
    release: Release, load: Load, name: str, work: Callable[[httpx.AsyncClient], Awaitable[None]]
) -> threading.Thread:
    """``work(client)`` in a thread ``name`` inside the node's network namespace, ``client`` an
    HTTP client of the API Service with the admin key; an exception that ends it is counted in
    ``load.errors``, and ``load.finished`` is set when it ends."""
    url, key = release.api_url(), release.admin_key()
    holder = int((release.cluster_dir / "run" / "node-ns.pid").read_text())

    async def main() -> None:
        timeout = httpx.Timeout(60, connect=5)
        async with httpx.AsyncClient(
            base_url=url, timeout=timeout, headers={"Authorization": f"Bearer {key}"}
        ) as client:
            await work(client)

    def run() -> None:
        try:
            enter_network_namespace(holder)
            asyncio.run(main())
        except Exception as exc:  # counted, not lost in a thread
            load.errors.append(f"{name} stopped: {exc!r}")
        finally:
            load.finished.set()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


def start_load(release: Release, load: Load, user_id: str, clients: int) -> threading.Thread:
    """The clients, in a thread inside the node's network namespace."""
    return start_in_node(
        release, load, "node-faults-load", lambda client: run_load(client, load, user_id, clients)
    )


@dataclass
class Fault:
    kind: str
    at: float  # wall clock, when injected (the pod deleted, the process signalled)
    target: str  # the pod or process
    condition: bool  # what the kind asks for held (a job held, uploads in flight, scaling)
    recovered_s: float = 0.0  # until what it took was back


def wait_for(check: Any, within: float, every: float = 0.2) -> Any:
    """``check()``'s first truthy value within ``within`` s, or None."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if value := check():
                return value
        time.sleep(every)
    return None


def force_delete(release: Release, pod: str) -> float:
    """Delete the pod at once (grace period 0: its containers are killed); when."""
    at = time.time()
    kubectl(
        release.kubeconfig,
        "delete",
        "pod",
        pod,
        "-n",
        release.namespace,
        "--grace-period=0",
        "--force",
        "--wait=false",
    )
    return at


def busy_worker(release: Release) -> tuple[str, str] | None:
    """A running worker pod holding a job, and that job."""
    running = release.running("worker")
    for doc in release.jobs().find({"status": "processing"}, {"worker": 1}).limit(50):
        for pod in running:
            if str(doc.get("worker", "")).startswith(f"{pod}-"):
                return pod, str(doc["_id"])
    return None


def scaling(release: Release) -> bool:
    """The worker Deployment is between two sizes: the operator changed its replicas."""
    d = release.get("deployment", "worker")
    status = d.get("status", {})
    return bool(d["spec"].get("replicas", 0) != status.get("readyReplicas", 0))


def restart_node_process(release: Release, name: str) -> None:
    """Stop the node's ``name`` (SIGTERM to it alone, as a service manager restarting it would; its
    containers' shims keep running) and start it again as ``scripts/cluster.sh up`` does."""
    pid = int((release.cluster_dir / "run" / f"{name}.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    if not wait_for(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 30):
        os.kill(pid, signal.SIGKILL)
    up = cluster_sh(release.cluster_dir, "up", node=True, owner=False)
    if up.returncode != 0:
        raise RuntimeError(f"cluster.sh up after stopping {name}: {up.stderr[-2000:]}")


def _zombie(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    return True


def inject(release: Release, kind: str, load: Load) -> Fault:
    """The fault, once what it asks for holds (or after a while without: ``condition`` says)."""
    if kind == "worker":
        load.long_wanted += 1
        load.allowance = max(load.allowance, load.started + 1)
        held = wait_for(lambda: busy_worker(release), 60, every=0.05)
        pod = held[0] if held else random.choice(wait_for(lambda: release.running("worker"), 120) or ["-"])
        if pod == "-":  # no worker pod at all: nothing to kill
            return Fault(kind, time.time(), "no worker pod", False)
        return Fault(
            kind, force_delete(release, pod), f"{pod} holding {held[1]}" if held else pod, held is not None
        )
    if kind == "api":
        uploading = bool(wait_for(lambda: load.in_flight > 0, 30, every=0.01))
        pod = random.choice(release.running("api"))
        return Fault(kind, force_delete(release, pod), pod, uploading)
    if kind == "operator":
        moving = bool(wait_for(lambda: scaling(release), 15))
        pod = release.running("operator")[0]
        return Fault(kind, force_delete(release, pod), pod, moving)
    if kind in ("redis", "mongodb"):
        pod = release.running(kind)[0]
        return Fault(kind, force_delete(release, pod), pod, True)
    at = time.time()
    restart_node_process(release, kind)
    return Fault(kind, at, kind, True)


def back(release: Release, kind: str) -> bool:
    """What the fault took is back: the node Ready, and the Deployment of the pod killed (all but
    the workers', which the operator sizes, for the node's processes) has its pods Ready."""
    node = json.loads(kubectl(release.kubeconfig, "get", "nodes", "-o", "json"))["items"][0]
    if not any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"]):
        return False
    found = json.loads(
        kubectl(
            release.kubeconfig, "get", "deployments", "-n", release.namespace,
            "-l", f"app.kubernetes.io/instance={release.name}", "-o", "json",
        )
    )["items"]  # fmt: skip
    for d in found:
        component = d["metadata"]["labels"].get("app.kubernetes.io/component")
        if component == "worker" or (kind not in NODE_PROCESSES and component != kind):
            continue
        status = d.get("status", {})
        if (
            status.get("readyReplicas", 0) < d["spec"]["replicas"]
            or status.get("updatedReplicas", 0) < d["spec"]["replicas"]
        ):
            return False
        if status.get("replicas", 0) != d["spec"]["replicas"]:  # a killed pod still counted
            return False
    return True


class Watcher:
    """Polls the run's completed jobs in the database: a result that changes after a job was seen
    completed is a job completed twice."""

    def __init__(self, release: Release, user_id: str) -> None:
        self.release, self.user_id = release, user_id
        self.seen: dict[str, Any] = {}
        self.twice: set[str] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="node-faults-watch", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.wait(2.0):
            with contextlib.suppress(Exception):
                self.look()

    def look(self) -> None:
        query = {"user_id": self.user_id, "status": "completed"}
        for doc in self.release.jobs().find(query, {"result.processed_at": 1, "result.key": 1}):
            result = (doc["result"]["processed_at"], doc["result"]["key"])
            if self.seen.setdefault(doc["_id"], result) != result:
                self.twice.add(doc["_id"])


def run(
    release: Release,
    jobs: int,
    faults: list[str],
    *,
    clients: int = 4,
    drain_within: float = 900.0,
    on_fault: Any = None,
) -> dict[str, Any]:
    """The scenario: ``jobs`` jobs, the ``faults`` in this order spread evenly over them; the
    figures. ``on_fault(fault)`` is called after each fault recovered (progress)."""
    user_id = f"faults-{uuid.uuid4().hex[:8]}"
    slice_ = max(1, jobs // (len(faults) + 1))
    load = Load(jobs, allowance=slice_)
    watcher = Watcher(release, user_id)
    done: list[Fault] = []
    thread = start_load(release, load, user_id, clients)
    try:
        try:
            for k, kind in enumerate(faults, start=1):
                wait_for(
                    lambda k=k: len(load.accepted) + len(load.errors) >= k * slice_ or load.finished.is_set(),
                    3600,
                )
                load.allowance = (k + 1) * slice_
                fault = inject(release, kind, load)
                if not wait_for(lambda kind=kind: back(release, kind), 600, every=1.0):
                    raise AssertionError(f"not back within 600 s after {fault}")
                fault.recovered_s = round(time.time() - fault.at, 1)
                done.append(fault)
                if on_fault is not None:
                    on_fault(fault)
            load.allowance = jobs
        except KeyboardInterrupt:  # a run cut short (Ctrl-C): no more faults or jobs, then the count
            load.jobs = load.allowance = load.started
        thread.join(RETRY_FOR_S + 600)
        last = done[-1].at if done else time.time()
        accepted = list(load.accepted.values())

        def unfinished() -> int | None:
            n = release.jobs().count_documents(
                {"_id": {"$in": accepted}, "status": {"$in": ["pending", "processing"]}}
            )
            return None if n else 0

        drained = wait_for(lambda: unfinished() == 0, drain_within, every=1.0) is not None
        drain_s = time.time() - last
        docs = {}
        for _ in range(30):  # the database may just be back
            with contextlib.suppress(Exception):
                docs = {d["_id"]: d for d in release.jobs().find({"user_id": user_id})}
                break
            time.sleep(2)
        with contextlib.suppress(Exception):
            watcher.look()
    finally:
        watcher.stop.set()
    statuses = collections.Counter(docs[i]["status"] for i in accepted if i in docs)
    return {
        "jobs": jobs,
        "faults": dict(collections.Counter(f.kind for f in done)),
        "faults_in_condition": dict(collections.Counter(f.kind for f in done if f.condition)),
        "accepted": len(accepted),
        "client_errors": len(load.errors),
        "errors": load.errors[:20],
        "retried": dict(load.retried),
        "lost": sum(1 for i in accepted if i not in docs) + statuses["pending"] + statuses["processing"],
        "failed": statuses["failed"],
        "failed_by_reason": dict(
            collections.Counter(
                str(docs[i].get("error", ""))[:80]
                for i in accepted
                if docs.get(i, {}).get("status") == "failed"
            )
        ),
        "completed": statuses["completed"],
        "accepted_twice": len(set(docs) - set(accepted)),
        # each: its id, when it was recorded and how it ended (to set beside fault_log's times)
        "accepted_twice_jobs": [
            (i, docs[i]["created_at"].timestamp(), docs[i]["status"])
            for i in sorted(set(docs) - set(accepted))
        ],
        "completed_twice": len(watcher.twice),
        "redelivered": sum(1 for i in accepted if docs.get(i, {}).get("attempts", 0) > 1),
        "drained": drained,
        "drain_s": round(drain_s, 1),
        "recovery_s": {
            kind: sorted(f.recovered_s for f in done if f.kind == kind)
            for kind in dict.fromkeys(f.kind for f in done)
        },
        "fault_log": [asdict(f) for f in done],
    }
