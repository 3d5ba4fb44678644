"""Logs as a log collector reads them: with IMGFLOW_LOG_FORMAT=json the API and the worker write one
JSON object per line (time, level, logger, message, and the job, tenant or key a line is about),
without terminal colour codes, and the worker says a job's outcome in one line; text stays text."""

from __future__ import annotations

import json
from typing import Any

from imgflow.core.settings import Settings
from imgflow.harness import images
from imgflow.harness.client import api_client, make_key, submit, wait_finished
from tests.conftest import Processes

TENANT = "acme"


async def one_job(
    processes: Processes, settings: Settings, log_format: str
) -> tuple[str, list[str], list[str]]:
    """Run one job of TENANT through a fresh API and worker; the job id and each one's log lines,
    shutdown included."""
    api, base = processes.start_api(settings, IMGFLOW_LOG_FORMAT=log_format)
    worker = processes.start_worker(settings, IMGFLOW_LOG_FORMAT=log_format)
    async with api_client(base, timeout=30) as admin:
        key = await make_key(admin, TENANT, "jobs:write", "jobs:read")
    async with api_client(base, key=key, timeout=30) as client:
        response = await submit(client, images.jpeg())
        assert response.status_code == 202, response.text
        job_id: str = response.json()["jobId"]
        assert (await wait_finished(client, job_id))["status"] == "completed"
    for server in (worker, api):
        server.terminate()
    return job_id, api.log.read_text().splitlines(), worker.log.read_text().splitlines()


def parsed(lines: list[str]) -> list[dict[str, Any]]:
    records = []
    for line in lines:
        assert "\x1b[" not in line, line
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        records.append(record)
    return records


async def test_json_logs_are_one_object_a_line_and_one_line_per_job_outcome(
    processes: Processes, fresh_settings: Settings
) -> None:
    job_id, api_lines, worker_lines = await one_job(processes, fresh_settings, "json")
    assert api_lines and worker_lines
    [created] = [r for r in parsed(api_lines) if r["message"].startswith("created API key")]
    assert created["keyId"] == "bootstrap", created  # the admin key that made it
    about_the_job = [r for r in parsed(worker_lines) if r.get("jobId") == job_id or job_id in r["message"]]
    assert len(about_the_job) == 1, about_the_job
    [outcome] = about_the_job
    assert outcome["jobId"] == job_id and outcome["tenant"] == TENANT, outcome
    assert "completed" in outcome["message"], outcome


async def test_text_logs_stay_text(processes: Processes, fresh_settings: Settings) -> None:
    _, api_lines, worker_lines = await one_job(processes, fresh_settings, "text")
    assert api_lines and worker_lines
    for line in api_lines + worker_lines:
        assert not line.startswith("{"), line
        assert "\x1b[" not in line, line
