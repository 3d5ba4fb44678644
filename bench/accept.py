"""The API's CPU per accepted upload (issue 22: at most 3 ms on 1080p JPEG), against a bare Starlette
endpoint taking the same body, measured in the same run.

One stack (Redis, the MongoDB-wire server, the API, a worker making the jobs) with its default
settings, local storage, and beside it ``bare``: uvicorn (the API's HTTP protocol and event loop)
serving one Starlette route that reads the body and answers 202 with a small JSON. The same
closed-loop client (``BENCH_E2E_INFLIGHT`` in flight, default 4) posts the corpus' 1080p JPEGs as
multipart forms, nobody following the jobs, in interleaved rounds: to the bare endpoint; to the API
with its bootstrap admin key (what ``bench.peers.run``'s cost line measures); with a tenant's key
(its record, rate limit and place among the tenant's unfinished jobs); and with that key and an
``Idempotency-Key``. Reported per variant: the server process' CPU ms per accepted upload, its ratio
to the bare endpoint's, and the p50 of POST -> answer.

    uv run --frozen python -m bench.accept [--rounds 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench import corpus, e2e
from bench.system import tree_cpu_seconds
from imgflow.core.settings import StorageBackend
from imgflow.harness.client import make_key
from imgflow.harness.servers import Server, free_port, start_stack, wait_for_port

SUBSET = "jpeg1080"
TARGET_MS = 3.0


async def _take(request: Request) -> JSONResponse:
    async for _ in request.stream():
        pass
    return JSONResponse({"jobId": uuid.uuid4().hex, "status": "pending"}, status_code=202)


# the baseline: the HTTP server and framework under the API, doing nothing with the body
bare = Starlette(routes=[Route(e2e.JOBS, _take, methods=["POST"])])


@dataclass
class Variant:
    name: str
    server: Server
    base_url: str
    headers: dict[str, str]
    idempotent: bool = False
    cpu_s: float = 0.0
    accepted: int = 0
    latency_ms: list[float] = field(default_factory=list)

    @property
    def cpu_ms(self) -> float:
        return 1000 * self.cpu_s / self.accepted if self.accepted else float("nan")


async def measure(variant: Variant, payloads: list[tuple[str, bytes]], seconds: float, inflight: int) -> None:
    async with httpx.AsyncClient(base_url=variant.base_url, timeout=60, headers=variant.headers) as client:

        async def upload(item: tuple[str, bytes]) -> float:
            name, data = item
            headers = {"Idempotency-Key": uuid.uuid4().hex} if variant.idempotent else {}
            started = time.perf_counter()
            response = await client.post(
                e2e.JOBS,
                files={"file": (name, data, "application/octet-stream")},
                data={"userId": "bench"},
                headers=headers,
            )
            if response.status_code != 202:
                raise RuntimeError(
                    f"{variant.name}: POST {name}: {response.status_code} {response.text[:200]}"
                )
            return 1000 * (time.perf_counter() - started)

        await e2e.closed_loop(payloads[:inflight], inflight, upload)  # connections open, code warm
        work = payloads * (int(seconds * 1000) // len(payloads) + 1)  # more than any server takes
        before = tree_cpu_seconds(variant.server.pid)
        took = await e2e.closed_loop(work, inflight, upload, until=time.time() + seconds)
        variant.cpu_s += tree_cpu_seconds(variant.server.pid) - before
        variant.accepted += len(took)
        variant.latency_ms += took


async def tenant_key(base_url: str, admin: dict[str, str]) -> str:
    """A tenant's key whose limits the run never reaches: each upload still checks them."""
    async with httpx.AsyncClient(base_url=base_url, timeout=60, headers=admin) as client:
        return await make_key(
            client, "bench", "jobs:write", "jobs:read", createPerS=100000, createBurst=100000
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="per round and variant")
    args = parser.parse_args()
    inflight = int(os.environ.get("BENCH_E2E_INFLIGHT", "4"))
    corpus.ensure()
    payloads = [(i.path.name, i.path.read_bytes()) for i in corpus.images(SUBSET)]
    workdir = Path(tempfile.mkdtemp(prefix="imgflow-bench-accept-"))
    # a tenant's unfinished jobs pile up while uploads outrun the worker: no cap in the way
    settings = e2e.stack_settings(workdir, StorageBackend.local, {"tenant_max_unfinished": 1_000_000})
    stack = start_stack(settings, workdir)
    port = free_port()
    baseline = Server(
        "bare",
        [sys.executable, "-m", "uvicorn", "bench.accept:bare", "--port", str(port)]
        + ["--http", "httptools", "--no-access-log", "--log-level", "warning"],
        workdir / "bare.log",
    ).start()
    try:
        wait_for_port(port, process=baseline.process)
        api = f"http://127.0.0.1:{stack.settings.api_port}"
        admin_key = stack.settings.admin_key
        assert admin_key is not None  # start_stack makes one
        admin = {"Authorization": f"Bearer {admin_key}"}
        tenant = {"Authorization": f"Bearer {asyncio.run(tenant_key(api, admin))}"}
        variants = [
            Variant("bare Starlette", baseline, f"http://127.0.0.1:{port}", {}),
            Variant("API, admin key", stack.api, api, admin),
            Variant("API, tenant key", stack.api, api, tenant),
            Variant("API, tenant key + Idempotency-Key", stack.api, api, tenant, idempotent=True),
        ]
        for round_ in range(args.rounds):
            for variant in variants[round_ % len(variants) :] + variants[: round_ % len(variants)]:
                asyncio.run(measure(variant, payloads, args.seconds, inflight))
    finally:
        baseline.terminate()
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    base = variants[0].cpu_ms
    print(
        f"\nAPI CPU per accepted upload, {corpus.subset(SUBSET).title} ({len(payloads)} images), "
        f"{inflight} in flight, {args.rounds} rounds x {args.seconds:g} s per variant"
    )
    print(f"  {'variant':36s}{'uploads':>8s}{'CPU ms':>8s}{'/ bare':>8s}{'p50 ms':>8s}")
    for v in variants:
        print(
            f"  {v.name:36s}{v.accepted:8d}{v.cpu_ms:8.2f}{v.cpu_ms / base:8.2f}"
            f"{statistics.median(v.latency_ms):8.1f}"
        )
    print(f"  target: the API <= {TARGET_MS:g} ms per accepted upload")


if __name__ == "__main__":
    main()
