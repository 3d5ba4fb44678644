"""Webhooks under a tarpit tenant (issue 21): how much later another tenant's webhook arrives while
one tenant's 20 endpoints accept connections and never answer.

One stack on loopback with the default webhook settings (a receiver has 10 s to answer). The victim
tenant has one endpoint on a receiver that answers at once; each round submits one of its jobs
and times submit -> webhook arrival. First quiet, then after the attacker tenant registered 20
tarpit endpoints and finished a few jobs, so that its deliveries hang for the whole measurement.
Reported: the victim's p50 / max delay quiet and under the tarpit, and their ratio (same run).
Figures, not pass/fail (tests/test_webhook_isolation.py judges the ordering).

    uv run --frozen python -m bench.webhooks [--rounds 10] [--attacker-jobs 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from imgflow.core.settings import Settings
from imgflow.harness import images
from imgflow.harness.client import api_client, make_key, submit, wait_finished
from imgflow.harness.receivers import Receiver, receiver, tarpit
from imgflow.harness.servers import free_port, start_stack

LIMITS = {"create_per_s": 1000.0, "create_burst": 1000, "read_per_s": 1000.0, "read_burst": 1000}


async def delays(client: httpx.AsyncClient, hook: Receiver, rounds: int) -> list[float]:
    """Seconds from submitting a job to its webhook's arrival, one job at a time."""
    out = []
    for _ in range(rounds):
        seen = len(hook.arrived)
        started = time.monotonic()
        response = await submit(client, images.jpeg(320, 240))
        assert response.status_code == 202, response.text
        async with asyncio.timeout(300):
            while len(hook.arrived) == seen:  # noqa: ASYNC110 - the receiver is a thread
                await asyncio.sleep(0.01)
        out.append(hook.arrived[seen] - started)
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_s": round(statistics.median(values), 3), "max_s": round(max(values), 3)}


async def measure(base: str, admin_key: str, rounds: int, attacker_jobs: int) -> dict[str, Any]:
    async with api_client(base, key=admin_key, timeout=30) as admin:
        victim_key = await make_key(admin, "victim", "jobs:read", "jobs:write", **LIMITS)
        attacker_key = await make_key(admin, "attacker", "jobs:read", "jobs:write", **LIMITS)
    with receiver() as hook, tarpit() as pit:
        async with (
            api_client(base, key=victim_key, timeout=30) as victim,
            api_client(base, key=attacker_key, timeout=30) as attacker,
        ):
            assert (await victim.post("/api/webhooks", json={"url": hook.url})).status_code == 201
            await delays(victim, hook, 2)  # warm-up
            quiet = await delays(victim, hook, rounds)
            for i in range(20):
                made = await attacker.post("/api/webhooks", json={"url": pit.url(f"t{i}")})
                assert made.status_code == 201, made.text
            for _ in range(attacker_jobs):
                job_id = (await submit(attacker, images.jpeg(320, 240))).json()["jobId"]
                await wait_finished(attacker, job_id)
            async with asyncio.timeout(60):
                while not pit.held:  # noqa: ASYNC110 - the attacker's deliveries hang from here
                    await asyncio.sleep(0.05)
            loaded = await delays(victim, hook, rounds)
            hanging = len(pit.held)
    return {
        "rounds": rounds,
        "attacker_jobs": attacker_jobs,
        "tarpit_connections": hanging,
        "quiet": summary(quiet),
        "tarpit": summary(loaded),
        "ratio_p50": round(statistics.median(loaded) / statistics.median(quiet), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--attacker-jobs", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="imgflow-webhooks-"))
    settings = Settings(
        api_port=free_port(),
        worker_metrics_port=free_port(),
        storage_backend="local",
        storage_dir=workdir / "files",
        allow_private_urls=True,  # the receivers are on loopback
        reuse_disabled_tenants="*",  # the same image each round: every job made by a worker
    )
    stack = start_stack(settings, workdir)
    try:
        base = f"http://127.0.0.1:{stack.settings.api_port}"
        assert stack.settings.admin_key is not None
        result = asyncio.run(measure(base, stack.settings.admin_key, args.rounds, args.attacker_jobs))
    finally:
        stack.stop()
    q, t = result["quiet"], result["tarpit"]
    print(
        f"victim's webhook delay (submit -> arrival), {result['rounds']} jobs: quiet p50 {q['p50_s']} s "
        f"(max {q['max_s']}); with another tenant's 20 tarpit endpoints and {result['attacker_jobs']} "
        f"finished jobs ({result['tarpit_connections']} connections hanging): p50 {t['p50_s']} s "
        f"(max {t['max_s']}); ratio {result['ratio_p50']}"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
