"""A real Prometheus (built by scripts/tools.sh from the module promtool comes from) scrapes a real
API and worker on loopback, labelled as the chart's ServiceMonitor labels them (job: the Service's
name, namespace), and evaluates deploy/prometheus/alerts.yaml with each minute of its durations
made two seconds. Failing jobs take ImgflowJobFailuresHigh from pending to firing, and the Grafana
dashboard's API and worker queries return series. (The operator's metrics need a Kubernetes API
server; the backlog alerts are unit-tested in deploy/prometheus/alerts_test.yaml.)
"""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from imgflow.core.settings import Settings
from imgflow.harness import images
from imgflow.harness.client import api_client, submit, wait_finished
from imgflow.harness.paths import TOOLS
from imgflow.harness.servers import free_port, wait_for_port
from tests.conftest import Processes, make_settings
from tests.test_alerts import RULES, dashboard_queries

NAMESPACE = "imgflow"
# What the operator alone exports; no operator runs here.
OPERATOR_METRICS = re.compile(r"imgflow_queue_backlog|imgflow_autoscaler_|imgflow_operator_")


def seconds_for_minutes(rules: str) -> str:
    """The rules with every `for: Nm` and range `[Nm]` made 2N seconds, so they act in a test."""
    return re.sub(r"(for: |\[)(\d+)m\b", lambda m: f"{m.group(1)}{2 * int(m.group(2))}s", rules)


def test_durations_become_seconds() -> None:
    assert seconds_for_minutes("x[10m]) > 0\n  for: 15m\n") == "x[20s]) > 0\n  for: 30s\n"


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    async def get(self, path: str, **params: str) -> Any:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            reply = await client.get(path, params=params)
        reply.raise_for_status()
        return reply.json()["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self.get("/api/v1/query", query=expr))["result"]
        return result

    async def alerts(self, name: str) -> list[dict[str, Any]]:
        return [a for a in (await self.get("/api/v1/alerts"))["alerts"] if a["labels"]["alertname"] == name]


@pytest.fixture
def settings(redis_url: str, mongodb_url: str) -> Settings:
    return make_settings(redis_url, mongodb_url)


@pytest.fixture
def prometheus(processes: Processes, settings: Settings, tmp_path: Path) -> Iterator[tuple[Prometheus, str]]:
    binary = TOOLS / "prometheus"
    assert binary.exists(), f"{binary} is missing: run scripts/tools.sh prometheus"
    _, api_url = processes.start_api(settings)
    worker = processes.start_worker(settings)
    targets = {
        "imgflow-api": api_url.removeprefix("http://"),
        "imgflow-worker-metrics": f"127.0.0.1:{worker.env['IMGFLOW_WORKER_METRICS_PORT']}",
    }
    (tmp_path / "alerts.yaml").write_text(seconds_for_minutes(RULES.read_text()))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yaml"],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target], "labels": {"namespace": NAMESPACE}}]}
            for job, target in targets.items()
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp_path / "prometheus.log").open("w") as log:
        proc = subprocess.Popen(
            [
                str(binary),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, process=proc)
        yield Prometheus(f"http://127.0.0.1:{port}"), api_url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def wait_for(what: str, check: Any, within: float = 120) -> None:
    """Poll ``check()`` until it is true; ``within`` only stops a hung test."""
    deadline = asyncio.get_running_loop().time() + within
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.5)


async def test_failing_jobs_take_the_failure_alert_from_pending_to_firing(
    prometheus: tuple[Prometheus, str],
) -> None:
    prom, api_url = prometheus

    async def both_scraped() -> bool:
        return len(await prom.query('up{namespace="imgflow"} == 1')) == 2

    await wait_for("Prometheus never scraped the API and the worker", both_scraped)
    assert await prom.alerts("ImgflowJobFailuresHigh") == []

    async with api_client(api_url, timeout=30) as client:
        good = (await submit(client, images.jpeg(320, 240))).json()["jobId"]
        assert (await wait_finished(client, good))["status"] == "completed"
        states: list[str] = []

        async def keep_failing() -> None:
            while True:
                assert (await submit(client, images.truncated_jpeg())).status_code == 202
                await asyncio.sleep(0.5)

        async def firing() -> bool:
            for alert in await prom.alerts("ImgflowJobFailuresHigh"):
                if states[-1:] != [alert["state"]]:
                    states.append(alert["state"])
            return states[-1:] == ["firing"]

        failing = asyncio.create_task(keep_failing())
        try:
            await wait_for("ImgflowJobFailuresHigh never fired", firing)
        finally:
            failing.cancel()
    assert states[:1] == ["pending"] and "firing" in states
    [alert] = await prom.alerts("ImgflowJobFailuresHigh")
    assert alert["labels"] == {
        "alertname": "ImgflowJobFailuresHigh",
        "namespace": NAMESPACE,
        "severity": "warning",
    }
    assert re.fullmatch(
        r"\d+(\.\d+)?% of the jobs finished in imgflow in 10 minutes failed\.",
        alert["annotations"]["description"],
    )
    # the worker's and the API's rules see their series, and stay quiet while all is well
    quiet_alerts = ("ImgflowApiErrors", "ImgflowBackendUnreachable", "ImgflowDeadLetters")
    for quiet in (*quiet_alerts, "ImgflowJobWaitingTooLong", "ImgflowWebhooksFailing"):
        assert await prom.alerts(quiet) == [], quiet

    queries = [q.replace("[1m]", "[20s]") for q in dashboard_queries() if not OPERATOR_METRICS.search(q)]
    assert len(queries) >= 10
    for query in queries:
        assert await prom.query(query), f"no series for the dashboard's {query}"
