"""A job's life has one home: from accept to completed, its id crosses at most 8 of imgflow's source
files (issue 20), counted by imgflow.harness.jobpath's rule on a real API and worker."""

from __future__ import annotations

from pathlib import Path

from imgflow.core.settings import Settings
from imgflow.harness.jobpath import trace_one_job

MOST = 8


async def test_a_jobs_path_from_accept_to_completed_crosses_at_most_8_files(
    fresh_settings: Settings, tmp_path: Path
) -> None:
    path = await trace_one_job(fresh_settings, tmp_path)
    files = "\n  ".join(path.files)
    # the ends of the path are seen, so the count is of a real run
    assert {"api/routes/jobs.py", "core/lifecycle.py", "worker/processor.py"} <= set(path.files), files
    assert len(path.files) <= MOST, f"job {path.job_id} crossed {len(path.files)} files:\n  {files}"
