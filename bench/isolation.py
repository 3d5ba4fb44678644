"""Isolation under attack (issue 19): how much slower another tenant is answered while one key attacks.

One stack on loopback: Redis, the MongoDB-wire server, SeaweedFS (the s3 backend: one attack reads a
~50 MB thumbnail slowly), a worker, and the API in a cgroup v1 memory group of the chart's API
limit where the machine has one (as its container would be; an API an attack took down is started
again for the next). For each attack of imgflow.harness.attacks, the victim tenant's traffic (create →
poll until completed → thumbnail, a read of one job every 0.2 s, /readyz) runs first quiet for as
long as an attack lasts, then again while the attack runs.
Reported per attack: the victim's p50/p95 latency of a job read and of a whole round trip, quiet and
under attack, their ratio (attack / quiet, measured in the same run), what went wrong for the victim
and the API's peak RSS. Figures, not pass/fail (tests/test_isolation.py judges).

    uv run --frozen python -m bench.isolation [--attacks hostile-avif,deep-pages,...] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from imgflow.core.settings import Settings, StorageBackend
from imgflow.harness import images
from imgflow.harness.attacks import ATTACKS, HOLD_S, Target, Victim, measure, percentiles, prepare
from imgflow.harness.memory_groups import (
    MEMORY_CGROUPS,
    chart_limit,
    joining,
    memory_group,
    peak_rss,
    reset_peak_rss,
)
from imgflow.harness.servers import Server, free_port, seaweedfs_server, start_stack, wait_for_port

KINDS = ("get", "round trip")


def figures(victim: Victim) -> dict[str, Any]:
    out: dict[str, Any] = {"failures": victim.failures, "round_trips": victim.round_trips}
    for kind in KINDS:
        values = victim.latency_s.get(kind, [])
        out[kind] = [round(v * 1000, 2) for v in percentiles(values)] if values else None
    return out


@contextlib.contextmanager
def api_memory_group() -> Iterator[Path | None]:
    """A memory group of the chart's API limit, if the machine lets us make one (cgroup v1, root);
    else None, and the API runs unbounded."""
    if not MEMORY_CGROUPS.is_dir():
        print("bench: no cgroup v1 memory controller here; the API runs without a memory limit")
        yield None
        return
    with memory_group(chart_limit("api")) as group:
        yield group


def start_in(api: Server, group: Path | None, port: int) -> None:
    """The API (again), in ``group`` from its first instruction."""
    api.terminate()
    if group is not None and api.argv[0] != "sh":
        api.argv = [*joining(group), *api.argv]
    api.start()
    wait_for_port(port, process=api.process)


async def victim_key_and_job(base_url: str, admin_key: str) -> tuple[str, str, str]:
    """Keys of the attacker's and the victim's tenants, and a completed job of the victim's."""
    admin = {"Authorization": f"Bearer {admin_key}"}
    async with httpx.AsyncClient(base_url=base_url, headers=admin, timeout=30) as client:
        keys = []
        for tenant in ("attacker", "victim"):
            made = await client.post(
                "/api/admin/keys",
                json={"tenant": tenant, "scopes": ["jobs:read", "jobs:write"], "name": "isolation"},
            )
            made.raise_for_status()
            keys.append(made.json()["key"])
        created = await client.post(
            "/api/image-processing/jobs",
            files={"file": ("p.jpg", images.jpeg(320, 240), "image/jpeg")},
            data={"userId": "victim"},
            headers={"Authorization": f"Bearer {keys[1]}"},
        )
        created.raise_for_status()
    return keys[0], keys[1], created.json()["jobId"]


async def run(names: list[str], workdir: Path) -> dict[str, Any]:
    s3 = seaweedfs_server(workdir / "s3")
    s3.server.start()
    try:
        s3.wait_ready()
        settings = Settings(
            api_port=free_port(),
            worker_metrics_port=free_port(),
            storage_backend=StorageBackend.s3,
            s3_endpoint=s3.endpoint,
            s3_bucket="imgflow-bench",
            s3_access_key_id=s3.access_key,
            s3_secret_access_key=s3.secret_key,
        )
        stack = start_stack(settings, workdir)
        try:
            with api_memory_group() as group:
                return await measure_all(names, stack.settings, stack.api, group)
        finally:
            stack.stop()
    finally:
        s3.stop()


async def measure_all(
    names: list[str], settings: Settings, api: Server, group: Path | None
) -> dict[str, Any]:
    start_in(api, group, settings.api_port)
    base_url = f"http://127.0.0.1:{settings.api_port}"
    assert settings.admin_key is not None
    attacker, victim, job_id = await victim_key_and_job(base_url, settings.admin_key)
    target = Target(base_url, settings, attacker, "attacker")
    await prepare(target)
    results: dict[str, Any] = {}
    for name in names:
        if not api.alive:  # an earlier attack took it down: said in its row; start it again
            start_in(api, group, settings.api_port)
        calm = await measure(base_url, victim, job_id, asyncio.sleep(HOLD_S))
        reset_peak_rss(api.pid)  # the peak of this attack only
        attacked = await measure(base_url, victim, job_id, ATTACKS[name](target))
        results[name] = {
            "quiet": figures(calm),
            "attack": figures(attacked),
            "api_alive": api.alive,
            "api_peak_rss_mib": peak_rss(api.pid) >> 20 if api.alive else None,
        }
        print_row(name, results[name])
    return results


def _ratio(quiet_ms: list[float] | None, attack_ms: list[float] | None, i: int) -> str:
    if not quiet_ms or not attack_ms:
        return "-"
    return f"{attack_ms[i]:.0f}/{quiet_ms[i]:.0f} = {attack_ms[i] / quiet_ms[i]:.2f}"


def print_row(name: str, row: dict[str, Any]) -> None:
    calm, attacked = row["quiet"], row["attack"]
    cells = [_ratio(calm[kind], attacked[kind], i) for kind in KINDS for i in (0, 1)]  # p50 and p95 of each
    failures = attacked["failures"]
    trouble = f"{len(failures)} failed, e.g. {failures[0]}" if failures else "none failed"
    rss = row["api_peak_rss_mib"]
    print(
        f"{name:24} "
        + " ".join(f"{c:>20}" for c in cells)
        + (f"  API peak {rss} MiB; " if rss else "  API DIED; ")
        + trouble,
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--attacks", default=",".join(ATTACKS), help="comma-separated, of: " + ", ".join(ATTACKS)
    )
    parser.add_argument("--out", type=Path, help="the figures as JSON")
    args = parser.parse_args()
    names = args.attacks.split(",")
    print(
        f"Victim latency under attack / quiet, ms (ratio), same run; attacks hold {HOLD_S:g} s\n"
        f"{'attack':24} " + " ".join(f"{h:>20}" for h in ("GET p50", "GET p95", "round trip p50", "p95")),
        flush=True,
    )
    results = asyncio.run(run(names, Path(tempfile.mkdtemp(prefix="imgflow-isolation-"))))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
