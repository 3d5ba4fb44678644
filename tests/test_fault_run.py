"""A shortened fault run (imgflow.harness.faults; bench/studies/faults.py runs the long one) in the
suite: workers SIGKILLed every 2 s, Redis restarted, the MongoDB-wire server SIGKILLed right after
a 202 and at a random moment, while jobs are submitted; no accepted job is lost, stuck or failed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imgflow.harness import faults

pytestmark = pytest.mark.slow  # starts servers of its own (imgflow.harness.faults), which no fixture shows


async def test_no_healthy_job_fails_while_workers_are_killed(tmp_path: Path) -> None:
    result = await faults.run(jobs=240, workers=2, kill_every=2.0, drain=240.0, workdir=tmp_path)
    assert result["accepted"] + result["refused (503)"] == 240
    assert result["workers killed"] >= 2
    assert os.environ.get("MONGODB_URL") or result["database crashes"], result  # an external one is not ours
    assert (result["lost"], result["not listed"], result["stuck"]) == (0, 0, 0), result
    assert result["failed by reason"] == {}, result
    assert result["completed"] == result["accepted"]
