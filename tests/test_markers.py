"""``pytest -m unit`` selects the tests that need no server: what to run while editing."""

from __future__ import annotations

import subprocess
import sys

from imgflow.harness.paths import ROOT

FILES = (
    "tests/test_pipeline.py",  # pyvips steps on images in memory
    "tests/test_chart_render.py",  # helm template, no cluster
    "tests/test_api.py",  # the session's API and worker, Redis and the MongoDB-wire server
    "tests/test_storage.py",  # SeaweedFS too
    "tests/test_fault_run.py",  # starts servers of its own
    "tests/test_output_memory.py",  # no server, but slow
    "tests/kube/test_crd.py",  # a Kubernetes API server
)


def unit_files() -> set[str]:
    """The files of FILES that ``pytest -m unit`` runs tests of (collected by a child pytest)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "unit",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            *FILES,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return {line.split("::")[0] for line in done.stdout.splitlines() if "::" in line}


def test_unit_selects_the_tests_that_need_no_server() -> None:
    assert unit_files() == {"tests/test_pipeline.py", "tests/test_chart_render.py"}
