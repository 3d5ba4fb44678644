"""Identical work made once (issue 25): accept -> completed for a job that reuses an identical
finished job's outputs, against one a worker makes, in the same run.

One stack on loopback with the default settings (reuse on). Each round sends a new image (a JPEG
of its own size, so nothing is reused) and follows its job until it is completed (its event
stream, opened when the answer arrives, ends then); then sends the same bytes with the same
options again, whose answer already says ``completed``. Both are timed from sending the upload to
knowing the job completed, as a client does. Reported: each path's p50 / max and the p50 ratio
(reused / made). Figures, not pass/fail (tests/test_reuse.py judges the behaviour).

    uv run --frozen python -m bench.reuse [--rounds 20] [--out FILE]
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
from imgflow.harness.client import JOBS, api_client, submit
from imgflow.harness.servers import free_port, start_stack


async def completed_after(client: httpx.AsyncClient, photo: bytes) -> tuple[float, bool]:
    """Seconds from sending ``photo`` until its job is known completed, and whether it was
    reused."""
    started = time.monotonic()
    answer = await submit(client, photo)
    assert answer.status_code == 202, answer.text
    job_id, status = answer.json()["jobId"], answer.json()["status"]
    if status != "completed":
        events = await client.get(f"{JOBS}/{job_id}/events")  # ends once the job is finished
        assert '"status":"completed"' in events.text.replace(" ", ""), events.text[-300:]
    elapsed = time.monotonic() - started
    job = (await client.get(f"{JOBS}/{job_id}")).json()
    assert job["status"] == "completed", job
    return elapsed, "reusedFrom" in job["result"]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50_ms": round(statistics.median(values) * 1000, 1), "max_ms": round(max(values) * 1000, 1)}


async def measure(base: str, admin_key: str, rounds: int) -> dict[str, Any]:
    made: list[float] = []
    reused: list[float] = []
    async with api_client(base, key=admin_key, timeout=60) as client:
        for i in range(rounds + 2):  # the first two warm the worker and the API up
            photo = images.jpeg(1024 + 8 * i, 768)
            first, first_reused = await completed_after(client, photo)
            again, again_reused = await completed_after(client, photo)
            assert not first_reused and again_reused, "the second of each pair must reuse the first"
            if i >= 2:
                made.append(first)
                reused.append(again)
    return {
        "rounds": rounds,
        "image": "JPEG ~1024x768, the default thumbnail",
        "made": summary(made),
        "reused": summary(reused),
        "ratio_p50": round(statistics.median(reused) / statistics.median(made), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="imgflow-reuse-"))
    settings = Settings(
        api_port=free_port(),
        worker_metrics_port=free_port(),
        storage_backend="local",
        storage_dir=workdir / "files",
    )
    stack = start_stack(settings, workdir)
    try:
        base = f"http://127.0.0.1:{stack.settings.api_port}"
        assert stack.settings.admin_key is not None
        result = asyncio.run(measure(base, stack.settings.admin_key, args.rounds))
    finally:
        stack.stop()
    m, r = result["made"], result["reused"]
    print(
        f"accept -> completed, {result['rounds']} pairs ({result['image']}): made by a worker p50 "
        f"{m['p50_ms']} ms (max {m['max_ms']}); reused p50 {r['p50_ms']} ms (max {r['max_ms']}); "
        f"ratio reused/made {result['ratio_p50']}"
    )
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
