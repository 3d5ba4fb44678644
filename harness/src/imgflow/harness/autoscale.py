"""Autoscaling with real pods: a release on the local node, bursts of slow jobs, the worker
Deployment from 0 up and back to 0, timed and counted.

Needs a release installed by ``scripts/deploy.sh`` (``make deploy``) whose workers scale to zero
(see ``AUTOSCALE_VALUES``; ``--install`` installs one) and reaches its pods directly: the host has
a route to the node's pod network. In the release's namespace it runs a source server (a pod of
the base image answering ``/<name>.jpg?delay=S`` after S seconds), then for each cycle:

1. waits until the worker Deployment is at 0 replicas with no worker pod left;
2. creates an ImageJob of ``--jobs`` URL sources, each taking ``--delay`` s to fetch;
3. records, from watches of the Deployment and the worker pods: the first replica patch, the
   first worker pod Ready, the first and last job completed (the jobs' own times in MongoDB);
4. waits for the ImageJob to succeed and the workers to go back to 0.

Interrupted jobs, the figure that must be 0: a job a worker gave back while stopping (its
``given_back`` count in MongoDB) or that a second worker took over after the first one died (its
``attempts`` exceeds 1).

    uv run --frozen python -m bench.node_autoscale [--cycles 5] [--jobs 12] [--delay 2] [--json PATH]
        [--kubeconfig .cluster/kubeconfig] [--namespace imgflow] [--release imgflow] [--install]
"""

from __future__ import annotations

import base64
import json
import math
import statistics
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes
import pymongo

from imgflow.harness import images
from imgflow.harness.operator import DELETION_COST
from imgflow.harness.paths import ROOT, TOOLS

KUBECTL = TOOLS / "kubectl"

# Values for a release this benchmark can run on: workers from 0 to 3, 2 queued jobs per worker,
# back to 0 three seconds after the queue empties; in-cluster URL sources allowed.
AUTOSCALE_VALUES = [
    "--set", "worker.autoscaling.minReplicas=0",
    "--set", "worker.autoscaling.maxReplicas=3",
    "--set", "worker.autoscaling.backlogPerReplica=2",
    "--set", "worker.autoscaling.scaleToZero=true",
    "--set", "worker.autoscaling.scaleDownWindowSeconds=3",
    "--set", "config.allowPrivateUrls=true",
]  # fmt: skip

SOURCE_SERVER = """
import http.server, time, urllib.parse
IMAGE = open("/data/image.jpg", "rb").read()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
        time.sleep(min(float(query.get("delay", ["0"])[0]), 30))
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(IMAGE)))
        self.end_headers()
        self.wfile.write(IMAGE)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("", 8080), Handler).serve_forever()
"""


def kubectl(kubeconfig: Path, *args: str, input: str | None = None) -> str:
    done = subprocess.run(
        [str(KUBECTL), f"--kubeconfig={kubeconfig}", *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {done.stderr}")
    return done.stdout


def source_server_manifest(image: str, jpeg: bytes) -> str:
    """A ConfigMap (the script and one JPEG), a Deployment running it and a Service ``sources``."""
    labels = {"app": "sources"}
    security = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    items: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "sources"},
            "data": {"serve.py": SOURCE_SERVER},
            "binaryData": {"image.jpg": base64.b64encode(jpeg).decode()},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "sources", "labels": labels},
            "spec": {
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "automountServiceAccountToken": False,
                        "securityContext": {
                            "runAsNonRoot": True,
                            "runAsUser": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [
                            {
                                "name": "serve",
                                "image": image,
                                "imagePullPolicy": "Never",
                                "command": ["python3", "/data/serve.py"],
                                "ports": [{"containerPort": 8080}],
                                "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                                "securityContext": security,
                                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                            }
                        ],
                        "volumes": [{"name": "data", "configMap": {"name": "sources"}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "sources"},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


@dataclass
class Watched:
    """What the watches saw, with this machine's wall-clock times."""

    replicas: list[tuple[float, int]] = field(default_factory=list)
    ready_pods: dict[str, float] = field(default_factory=dict)  # pod uid -> first seen Ready
    removals: dict[str, Removal] = field(default_factory=dict)  # pod name -> its removal
    costs: dict[str, str | None] = field(default_factory=dict)  # live pod -> its deletion cost now


@dataclass
class Removal:
    """A worker pod the ReplicaSet removed, as the API showed it when it was marked for deletion."""

    pod: str
    cost: str | None  # its controller.kubernetes.io/pod-deletion-cost then
    marked: float  # deletionTimestamp first seen
    gone: float | None = None  # the pod object deleted: its containers stopped
    exit_code: int | None = None  # the worker's, as it stopped (137: killed at the grace period's end)
    age_s: float | None = None  # since the pod was created, when marked
    was_ready: bool = False  # Ready before it was marked (a pod removed while starting was not)
    others: dict[str, str | None] = field(default_factory=dict)  # the pods not marked: their costs then


def watch(
    api: kubernetes.client.ApiClient, namespace: str, worker: str, seen: Watched, stop: threading.Event
) -> None:
    """Record the worker Deployment's replicas and its pods' first Ready, from watches in threads."""

    def follow(
        list_objects: Any, on_object: Callable[[Any, str], None], **selector: str
    ) -> Callable[[], None]:
        def loop() -> None:
            while not stop.is_set():  # a watch ends every 5 s, so that `stop` is seen
                w = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
                for event in w.stream(list_objects, namespace, timeout_seconds=5, **selector):  # type: ignore[no-untyped-call]
                    on_object(event["object"], event["type"])

        return loop

    def deployment(d: Any, _: str) -> None:
        replicas = d.spec.replicas or 0
        if not seen.replicas or seen.replicas[-1][1] != replicas:
            seen.replicas.append((time.time(), replicas))

    def pod(p: Any, kind: str) -> None:
        now = time.time()
        ready = any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
        if ready and p.metadata.uid not in seen.ready_pods:
            seen.ready_pods[p.metadata.uid] = now
        name = p.metadata.name
        cost = (p.metadata.annotations or {}).get(DELETION_COST)
        if p.metadata.deletion_timestamp is not None and name not in seen.removals:
            created = p.metadata.creation_timestamp
            seen.removals[name] = Removal(
                name,
                cost,
                now,
                age_s=None if created is None else round(now - created.timestamp(), 1),
                was_ready=p.metadata.uid in seen.ready_pods,
                others={n: c for n, c in seen.costs.items() if n != name and n not in seen.removals},
            )
        if kind == "DELETED":
            seen.costs.pop(name, None)
        else:
            seen.costs[name] = cost
        if kind == "DELETED" and name in seen.removals and seen.removals[name].gone is None:
            seen.removals[name].gone = now
            for c in p.status.container_statuses or []:
                if c.state and c.state.terminated:
                    seen.removals[name].exit_code = c.state.terminated.exit_code

    follow_deployment = follow(
        kubernetes.client.AppsV1Api(api).list_namespaced_deployment,
        deployment,
        field_selector=f"metadata.name={worker}",
    )
    follow_pods = follow(
        kubernetes.client.CoreV1Api(api).list_namespaced_pod,
        pod,
        label_selector="app.kubernetes.io/component=worker",
    )
    for target in (follow_deployment, follow_pods):
        threading.Thread(target=target, daemon=True).start()


@dataclass
class Cycle:
    jobs: int
    patch_s: float  # first job published -> first replica patch seen
    pod_ready_s: float  # first job published -> first new worker pod Ready
    first_done_s: float  # first job published -> first job completed (wake from zero)
    all_done_s: float  # first job published -> last job completed
    zero_s: float  # last job completed -> Deployment back at 0 replicas
    max_replicas: int


def wait_until_routed(kubeconfig: Path, namespace: str, release: str) -> None:
    """Until the ``sources`` Service answers from inside the cluster. Ready is not yet routed:
    until kube-proxy has written the Service's rules a fetch is refused, and a refused fetch fails
    a job for good (retrying transient failures is not built yet)."""
    fetch = "import urllib.request as u; u.urlopen('http://sources/probe.jpg', timeout=5).read()"
    cmd = [str(KUBECTL), f"--kubeconfig={kubeconfig}", "exec", "-n", namespace, f"deploy/{release}-api"]

    def answers() -> bool:
        done = subprocess.run([*cmd, "--", "python", "-c", fetch], capture_output=True, timeout=60)
        return done.returncode == 0

    wait("the sources Service answers inside the cluster", answers, 60)


def base_image() -> str:
    """The Debian base image of scripts/images.sh (python3, nothing else): the source server's."""
    for line in (ROOT / ".tools" / "images.env").read_text().splitlines():
        if line.startswith("BASE_IMAGE="):
            return line.split("=", 1)[1]
    raise RuntimeError("no BASE_IMAGE in .tools/images.env: run make images")


def pods(kubeconfig: Path, namespace: str, component: str) -> list[dict[str, Any]]:
    """The release's pods of one component (api, worker, redis, ...)."""
    selector = f"app.kubernetes.io/component={component}"
    found: list[dict[str, Any]] = json.loads(
        kubectl(kubeconfig, "get", "pods", "-n", namespace, "-l", selector, "-o", "json")
    )["items"]
    return found


def pod_ip(kubeconfig: Path, namespace: str, component: str) -> str:
    running = [p for p in pods(kubeconfig, namespace, component) if p["status"].get("phase") == "Running"]
    assert len(running) == 1, f"{component}: {len(running)} running pods"
    ip: str = running[0]["status"]["podIP"]
    return ip


def epoch(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def wait(what: str, check: Any, within: float) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {within:.0f}s: {what}")
        time.sleep(0.2)


def prepare(kubeconfig: Path, namespace: str, release: str) -> pymongo.collection.Collection[dict[str, Any]]:
    """The source server running and routed; the release's jobs collection (from the host, which
    routes to the pods)."""
    manifest = source_server_manifest(base_image(), images.jpeg(800, 600))
    kubectl(kubeconfig, "apply", "--server-side", "-n", namespace, "-f", "-", input=manifest)
    kubectl(kubeconfig, "rollout", "status", "deployment/sources", "-n", namespace, "--timeout=120s")
    wait_until_routed(kubeconfig, namespace, release)
    config = json.loads(
        kubectl(kubeconfig, "get", "configmap", f"{release}-config", "-n", namespace, "-o", "json")
    )
    database = config["data"].get("IMGFLOW_MONGODB_DATABASE", "imgflow")
    mongo: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        f"mongodb://{pod_ip(kubeconfig, namespace, 'mongodb')}:27017/", serverSelectionTimeoutMS=10_000
    )
    return mongo[database]["jobs"]


def watching(kubeconfig: Path, namespace: str, release: str) -> tuple[Watched, threading.Event]:
    """The release's worker Deployment and pods watched from now on, until the event is set."""
    api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    seen = Watched()
    stop = threading.Event()
    watch(api, namespace, f"{release}-worker", seen, stop)
    return seen, stop


def at_zero(kubeconfig: Path, namespace: str, seen: Watched) -> bool:
    idle = bool(seen.replicas) and seen.replicas[-1][1] == 0
    return idle and not pods(kubeconfig, namespace, "worker")


def create_image_job(kubeconfig: Path, namespace: str, name: str, jobs: int, delay: float) -> None:
    """An ImageJob of ``jobs`` URL sources of the source server, each taking ``delay`` s to fetch."""
    sources = [{"url": f"http://sources/{name}-{k}.jpg?delay={delay}"} for k in range(jobs)]
    ij = {
        "apiVersion": "imgflow.io/v1alpha1",
        "kind": "ImageJob",
        "metadata": {"name": name},
        "spec": {"userId": "autoscale", "sources": sources},
    }
    kubectl(kubeconfig, "create", "-n", namespace, "-f", "-", input=json.dumps(ij))


def interrupted(docs: list[dict[str, Any]]) -> dict[str, int]:
    """Jobs a stopping worker gave back, and jobs a second worker took over from a dead one."""
    return {
        "given_back": sum(d.get("given_back", 0) for d in docs),
        "redelivered": sum(1 for d in docs if d.get("attempts", 1) > 1),
    }


def run(
    kubeconfig: Path,
    namespace: str,
    release: str,
    cycles: int,
    jobs: int,
    delay: float,
    settle_s: float = 180,
) -> dict[str, Any]:
    """Run the cycles; the figures and the interrupted-job count. ``settle_s``: how long the
    workers may take to get back to 0 (an autoscaler with minutes of cooldown needs more)."""

    collection = prepare(kubeconfig, namespace, release)
    seen, stop = watching(kubeconfig, namespace, release)
    results: list[Cycle] = []
    submitted: list[str] = []
    try:
        for i in range(cycles):
            wait("workers at 0 before the burst", lambda: at_zero(kubeconfig, namespace, seen), settle_s)
            name = f"burst-{uuid.uuid4().hex[:6]}"
            started = time.time()
            create_image_job(kubeconfig, namespace, name, jobs, delay)
            kubectl(
                kubeconfig, "wait", f"imagejob/{name}", "-n", namespace,
                "--for=jsonpath={.status.phase}=Succeeded", "--timeout=300s",
            )  # fmt: skip
            submitted.append(f"{namespace}/{name}")
            docs = list(collection.find({"image_job": f"{namespace}/{name}"}))
            assert len(docs) == jobs and all(d["status"] == "completed" for d in docs)
            published = min(epoch(d["created_at"]) for d in docs)
            done = sorted(epoch(d["updated_at"]) for d in docs)
            wait("workers back to 0", lambda: at_zero(kubeconfig, namespace, seen), settle_s)
            patch = next(t for t, r in seen.replicas if t >= started and r > 0)
            # NaN when every new pod was removed before the kubelet reported it Ready
            ready = min((t for t in seen.ready_pods.values() if t >= started), default=math.nan)
            zero = next(t for t, r in seen.replicas if t >= done[-1] and r == 0)
            peak = max(r for t, r in seen.replicas if t >= started)
            results.append(
                Cycle(
                    jobs,
                    patch - published,
                    ready - published,
                    done[0] - published,
                    done[-1] - published,
                    zero - done[-1],
                    peak,
                )
            )
            print(f"cycle {i + 1}/{cycles}: {asdict(results[-1])}", flush=True)
    finally:
        stop.set()

    all_docs = [d for n in submitted for d in collection.find({"image_job": n})]
    return {
        "cycles": [asdict(c) for c in results],
        "jobs": len(all_docs),
        "interrupted": interrupted(all_docs),
        "ups": sum(1 for (_, a), (_, b) in zip(seen.replicas, seen.replicas[1:], strict=False) if b > a),
        "downs": sum(1 for (_, a), (_, b) in zip(seen.replicas, seen.replicas[1:], strict=False) if b < a),
    }


def median_p95(figures: dict[str, Any], key: str) -> tuple[float, float]:
    """The median and p95 of one of ``Cycle``'s times over the cycles of ``run``."""
    values = sorted(c[key] for c in figures["cycles"] if not math.isnan(c[key])) or [math.nan]
    return statistics.median(values), values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]


def summary(figures: dict[str, Any]) -> str:
    def stat(key: str) -> str:
        median, p95 = median_p95(figures, key)
        return f"median {median:6.2f} s   p95 {p95:6.2f} s"

    keda = {
        "patch_s": "up to 30 s (pollingInterval 30 s), then the HPA's next sync (15 s)",
        "pod_ready_s": "the same plus the pod start",
        "first_done_s": "the same plus the first job",
        "zero_s": "300 s (HPA scale-down stabilization) + cooldownPeriod 300 s before 1 -> 0",
    }
    lines = [
        f"{len(figures['cycles'])} cycles, {figures['jobs']} jobs; interrupted: {figures['interrupted']}",
        f"{'from the first job published to':<38} imgflow (measured)              KEDA + HPA defaults",
    ]
    names = {
        "patch_s": "the replica patch",
        "pod_ready_s": "the first new worker pod Ready",
        "first_done_s": "the first job completed (wake from 0)",
        "all_done_s": "the last job completed",
        "zero_s": "(last job done) back to 0 replicas",
    }
    for key, label in names.items():
        lines.append(f"  {label:<36} {stat(key):<32} {keda.get(key, '')}")
    return "\n".join(lines)


@dataclass
class BusyCycle:
    removed: list[Removal]  # worker pods the ReplicaSet removed in the cycle
    removed_during: int  # pods removed while the long job ran: the scale-down under test
    long_given_back: int  # the long job's pod was removed while running it (it gave the job back)
    interrupted: dict[str, int]
    long_pods: list[str] = field(default_factory=list)  # the pods that ran the long job, in turn
    long_attempts: int = 0


def follow_pods(
    collection: pymongo.collection.Collection[dict[str, Any]], image_job: str, stop: threading.Event
) -> list[str]:
    """The pods that take the jobs of ``image_job`` in turn, from the jobs' records (the consumer
    that started a job last, named after its pod), read every 0.2 s in a thread until ``stop``."""
    found: list[str] = []

    def loop() -> None:
        while not stop.is_set():
            for doc in collection.find({"image_job": image_job}, {"worker": 1}):
                consumer = doc.get("worker")
                pod = consumer.rsplit("-", 1)[0] if consumer else None
                if pod and pod not in found:
                    found.append(pod)
            stop.wait(0.2)

    threading.Thread(target=loop, daemon=True).start()
    return found


def busy_scale_down(
    kubeconfig: Path,
    namespace: str,
    release: str,
    cycles: int,
    jobs: int,
    delay: float,
    long_delay: float,
    settle_s: float = 180,
    ready: bool = True,
    at_least: int = 3,
) -> dict[str, Any]:
    """Scale-down while a pod is busy. Each cycle: ``jobs`` short jobs take the workers from 0 to
    3; once three pods are Ready one long job (a ``long_delay`` s fetch) goes to whichever frees a
    slot first; the short ones finish, the backlog (the long job alone) calls for one replica and
    the ReplicaSet removes two pods while the long job runs. The release should stop its workers
    within less than ``long_delay`` (``config.gracefulTimeoutS``), so that a busy pod removed
    shows as a job given back. Recorded: each removed pod's deletion cost as the API showed it
    when it was marked for deletion, its stop time and exit code, and the jobs given back.

    ``ready=False``: the long job once ``at_least`` worker containers run (not being deleted),
    Ready or not. The workers take jobs from the stream, not through a Service, so a running
    worker competes for the long job as a Ready one does; an autoscaler that removes pods as soon
    as the queue is empty (KEDA + HPA with no stabilization) removes them before the kubelet's
    next readiness probe, and one that adds them only at its next sync (the HPA's 15 s) may not
    reach three before a short burst is done. A cycle whose pods never run at once is counted as
    not reached."""
    collection = prepare(kubeconfig, namespace, release)
    seen, stop = watching(kubeconfig, namespace, release)
    results: list[BusyCycle] = []
    not_reached = 0

    def up(pod: dict[str, Any]) -> bool:
        statuses = pod["status"].get("containerStatuses", [])
        if ready:
            return any(c.get("ready") for c in statuses)
        deleted = pod["metadata"].get("deletionTimestamp")
        return not deleted and any("running" in c.get("state", {}) for c in statuses)

    def enough_up() -> bool:
        return sum(map(up, pods(kubeconfig, namespace, "worker"))) >= at_least

    try:
        for i in range(cycles):
            wait("workers at 0 before the burst", lambda: at_zero(kubeconfig, namespace, seen), settle_s)
            started = time.time()
            name = f"busy-{uuid.uuid4().hex[:6]}"
            create_image_job(kubeconfig, namespace, name, jobs, delay)
            try:
                wait(f"{at_least} worker pods " + ("Ready" if ready else "running"), enough_up, 180)
            except TimeoutError:
                if ready:
                    raise
                not_reached += 1
                print(f"busy cycle {i + 1}/{cycles}: {at_least} worker pods never ran at once", flush=True)
                kubectl(
                    kubeconfig, "wait", f"imagejob/{name}", "-n", namespace,
                    "--for=jsonpath={.status.phase}=Succeeded", "--timeout=300s",
                )  # fmt: skip
                continue
            create_image_job(kubeconfig, namespace, f"{name}-long", 1, long_delay)
            followed = threading.Event()
            long_pods = follow_pods(collection, f"{namespace}/{name}-long", followed)
            try:
                for ij in (name, f"{name}-long"):
                    kubectl(
                        kubeconfig, "wait", f"imagejob/{ij}", "-n", namespace,
                        "--for=jsonpath={.status.phase}=Succeeded", "--timeout=300s",
                    )  # fmt: skip
            finally:
                followed.set()
            wait("workers back to 0", lambda: at_zero(kubeconfig, namespace, seen), settle_s)
            docs = list(
                collection.find({"image_job": {"$in": [f"{namespace}/{name}", f"{namespace}/{name}-long"]}})
            )
            long_job = next(d for d in docs if d["image_job"].endswith("-long"))
            done = epoch(long_job["updated_at"])
            removed = [r for r in seen.removals.values() if r.marked >= started]
            during = sum(1 for r in removed if r.marked < done)
            given_back = long_job.get("given_back", 0)
            results.append(
                BusyCycle(
                    removed,
                    during,
                    given_back,
                    interrupted(docs),
                    list(long_pods),
                    long_job.get("attempts", 0),
                )
            )
            print(f"busy cycle {i + 1}/{cycles}: {asdict(results[-1])}", flush=True)
    finally:
        stop.set()
    stops = sorted(r.gone - r.marked for c in results for r in c.removed if r.gone is not None)
    return {
        "cycles": [asdict(c) for c in results],
        "not_reached": not_reached,
        "removed": sum(len(c.removed) for c in results),
        "removed_during_long_job": sum(c.removed_during for c in results),
        "long_given_back": sum(c.long_given_back for c in results),
        "interrupted": {k: sum(c.interrupted[k] for c in results) for k in ("given_back", "redelivered")},
        "stop_s": {"median": statistics.median(stops), "max": stops[-1]} if stops else {},
    }
