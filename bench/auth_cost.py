"""What API keys, rate limits and Idempotency-Key cost per request (issue 11's budget: < 1 ms at p50).

One stack (Redis, the MongoDB-wire server, a worker) and two API processes on it: one with
``IMGFLOW_AUTH=keys`` (a tenant key with limits too high to be reached, so every request still runs
the key lookup and the rate-limit script), one with ``IMGFLOW_AUTH=off``. One client sends, in
interleaved rounds, sequential creates of a small JPEG and reads of one job to each; a third variant
adds an ``Idempotency-Key`` to each create. Reported: p50/p95 latency and the API process' CPU per
request for each, and the differences. Figures, not pass/fail.

    uv run --frozen python -m bench.auth_cost [--rounds 10] [--per-round 40]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.system import tree_cpu_seconds
from imgflow.core.settings import AuthMode, Settings
from imgflow.harness import images
from imgflow.harness.servers import Server, api_server, free_port, start_stack, wait_for_port

JOBS = "/api/image-processing/jobs"
VARIANTS = ("off", "keys", "keys+idempotency")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=40)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="imgflow-auth-cost-"))
    settings = Settings(
        api_port=free_port(),
        worker_metrics_port=free_port(),
        storage_backend="local",
        storage_dir=workdir / "files",
        tenant_max_unfinished=1_000_000,
    )
    stack = start_stack(settings, workdir)
    settings = stack.settings
    open_settings = settings.model_copy(update={"auth": AuthMode.off, "api_port": free_port()})
    open_api: Server = api_server(open_settings, workdir / "api-open.log").start()
    try:
        wait_for_port(open_settings.api_port, process=open_api.process)
        keyed = f"http://127.0.0.1:{settings.api_port}"
        made = httpx.post(
            f"{keyed}/api/admin/keys",
            json={
                "tenant": "bench",
                "scopes": ["jobs:write", "jobs:read"],
                "name": "auth cost",
                "limits": {
                    "createPerS": 100000,
                    "createBurst": 100000,
                    "readPerS": 100000,
                    "readBurst": 100000,
                },
            },
            headers={"Authorization": f"Bearer {settings.admin_key}"},
        )
        made.raise_for_status()
        auth = {"Authorization": f"Bearer {made.json()['key']}"}
        clients = {
            "off": (
                httpx.Client(base_url=f"http://127.0.0.1:{open_settings.api_port}", timeout=30),
                open_api,
            ),
            "keys": (httpx.Client(base_url=keyed, timeout=30, headers=auth), stack.api),
            "keys+idempotency": (httpx.Client(base_url=keyed, timeout=30, headers=auth), stack.api),
        }
        photo = images.jpeg(320, 240)
        create_ms: dict[str, list[float]] = {v: [] for v in VARIANTS}
        read_ms: dict[str, list[float]] = {v: [] for v in VARIANTS}
        cpu_s = dict.fromkeys(VARIANTS, 0.0)
        requests = dict.fromkeys(VARIANTS, 0)
        job_of: dict[str, str] = {}
        for round_ in range(args.rounds + 1):  # round 0 warms up and is not counted
            for variant in VARIANTS:
                client, server = clients[variant]
                cpu_before = tree_cpu_seconds(server.pid)
                for _ in range(args.per_round):
                    headers = {"Idempotency-Key": uuid.uuid4().hex} if variant == "keys+idempotency" else {}
                    start = time.perf_counter()
                    reply = client.post(
                        JOBS,
                        files={"file": ("p.jpg", photo, "image/jpeg")},
                        data={"userId": "bench"},
                        headers=headers,
                    )
                    took = (time.perf_counter() - start) * 1000
                    assert reply.status_code == 202, reply.text
                    job_of[variant] = reply.json()["jobId"]
                    start = time.perf_counter()
                    read = client.get(f"{JOBS}/{job_of[variant]}")
                    read_took = (time.perf_counter() - start) * 1000
                    assert read.status_code == 200, read.text
                    if round_:
                        create_ms[variant].append(took)
                        read_ms[variant].append(read_took)
                if round_:
                    cpu_s[variant] += tree_cpu_seconds(server.pid) - cpu_before
                    requests[variant] += 2 * args.per_round
        for client, _ in clients.values():
            client.close()
    finally:
        open_api.terminate()
        stack.stop()

    print(f"\nAPI cost of keys + rate limits, {args.rounds} rounds x {args.per_round} creates + reads each")
    print(f"{'variant':18} {'create p50':>11} {'p95':>8} {'read p50':>9} {'p95':>8} {'API CPU/request':>16}")
    for v in VARIANTS:
        print(
            f"{v:18} {statistics.median(create_ms[v]):9.2f}ms {percentile(create_ms[v], 0.95):6.2f}ms "
            f"{statistics.median(read_ms[v]):7.2f}ms {percentile(read_ms[v], 0.95):6.2f}ms "
            f"{cpu_s[v] / requests[v] * 1000:14.2f}ms"
        )
    base_create, base_read = statistics.median(create_ms["off"]), statistics.median(read_ms["off"])
    for v in VARIANTS[1:]:
        print(
            f"added by {v:17}: create p50 {statistics.median(create_ms[v]) - base_create:+.2f} ms, "
            f"read p50 {statistics.median(read_ms[v]) - base_read:+.2f} ms, "
            f"CPU {(cpu_s[v] / requests[v] - cpu_s['off'] / requests['off']) * 1000:+.2f} ms per request"
        )


if __name__ == "__main__":
    main()
