"""What `make lint` checks with the Go-made linters, also run by `make test` (CI runs make test
first): the chart README is helm-docs' output, the CI workflows pass actionlint.

The tools come from scripts/tools.sh; a missing one fails these tests rather than skipping them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "imgflow"

# As in the Makefile's lint target.
HELM_DOCS_ARGS = ["-c", str(CHART), "-s", "file", "-l", "warning"]
REGENERATE = "run .tools/bin/helm-docs -c deploy/helm/imgflow -s file -l warning"
# shellcheck and pyflakes off: the same checks on every machine, whatever it has installed
ACTIONLINT_ARGS = ["-no-color", "-shellcheck=", "-pyflakes="]


def tool(name: str) -> Path:
    path = ROOT / ".tools" / "bin" / name
    assert path.exists(), f"{path} is missing: run scripts/tools.sh {name}"
    return path


def test_chart_readme_is_what_helm_docs_generates() -> None:
    proc = subprocess.run(
        [str(tool("helm-docs")), "--dry-run", *HELM_DOCS_ARGS],
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout == (CHART / "README.md").read_text(), (
        f"deploy/helm/imgflow/README.md is stale: {REGENERATE}"
    )


def test_workflows_pass_actionlint() -> None:
    workflows = sorted((ROOT / ".github" / "workflows").glob("*.yaml"))
    assert workflows
    proc = subprocess.run(
        [str(tool("actionlint")), *ACTIONLINT_ARGS, *map(str, workflows)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    """The check above can fail: a step using an undefined matrix key is refused."""
    broken = tmp_path / "broken.yaml"
    steps = "    steps:\n      - run: echo ${{ matrix.nope }}\n"
    broken.write_text(f"on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n{steps}")
    proc = subprocess.run(
        [str(tool("actionlint")), *ACTIONLINT_ARGS, str(broken)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "matrix" in proc.stdout, proc.stdout + proc.stderr
