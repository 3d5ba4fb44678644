"""Ready means serving: the API's /readyz and the worker's answer 200 only while MongoDB, Redis and
the storage answer, and say which one does not (a rollout, `helm --wait` and `make deploy` wait
on these probes)."""

from __future__ import annotations

from typing import Any

import httpx

from imgflow.core.settings import Settings
from imgflow.harness.servers import S3Server, free_port
from tests.conftest import Processes, on_s3


def readiness(processes: Processes, settings: Settings) -> dict[str, tuple[int, dict[str, Any]]]:
    """The API's and the worker's /readyz: status and body."""
    _, api = processes.start_api(settings)
    worker = processes.start_worker(settings)
    found = {}
    for name, base in (
        ("api", api),
        ("worker", f"http://127.0.0.1:{worker.env['IMGFLOW_WORKER_METRICS_PORT']}"),
    ):
        reply = httpx.get(f"{base}/readyz", timeout=30)
        json = reply.headers.get("content-type", "").startswith("application/json")
        body = reply.json() if json else {"text": reply.text}
        found[name] = (reply.status_code, body.get("checks", body))
    return found


def test_api_and_worker_are_ready_while_mongodb_redis_and_the_storage_answer(
    processes: Processes, fresh_settings: Settings, s3: S3Server
) -> None:
    everything = {"mongodb": "ok", "redis": "ok", "storage": "ok"}
    assert readiness(processes, on_s3(fresh_settings, s3)) == {
        "api": (200, everything),
        "worker": (200, everything),
    }


def test_api_and_worker_are_not_ready_while_the_storage_does_not_answer(
    processes: Processes, fresh_settings: Settings, s3: S3Server
) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # loopback, nothing listening
    settings = on_s3(fresh_settings, s3, s3_endpoint=nowhere, s3_timeout_s=1.0)
    for name, (status, checks) in readiness(processes, settings).items():
        assert status == 503, (name, checks)
        assert checks["storage"].startswith("unreachable"), (name, checks)
        assert (checks["mongodb"], checks["redis"]) == ("ok", "ok"), (name, checks)
