"""What `make lint` checks with the Go-made linters, also run by `make test` (CI runs make test
first): the chart README is helm-docs' output, the CI workflows pass actionlint; and the release
workflow publishes the images the chart names.

The tools come from scripts/tools.sh; a missing one fails these tests rather than skipping them.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

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


def test_the_release_publishes_the_images_the_chart_names() -> None:
    """On a version tag the workflow pushes and signs the three images and the chart; the chart's
    default image references are those pushes (its appVersion as tag)."""
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yaml").read_text())
    assert "v*" in workflow[True]["push"]["tags"]  # PyYAML reads the key `on` as True
    registry = workflow["env"]["REGISTRY"]
    jobs = workflow["jobs"]
    assert any(".ci/run" in s.get("run", "") for s in jobs["test"]["steps"])
    images = jobs["images"]
    assert images["needs"] == "test" and "refs/tags/v" in images["if"]
    members = images["strategy"]["matrix"]["member"]
    assert members == ["api", "worker", "operator"]
    build = next(s for s in images["steps"] if "build-push-action" in s.get("uses", ""))
    assert build["with"]["tags"].startswith("${{ env.REGISTRY }}/imgflow-${{ matrix.member }}:")
    assert build["with"]["build-args"] == "MEMBER=${{ matrix.member }}"
    assert set(workflow["env"]["PLATFORMS"].split(",")) == {"linux/amd64", "linux/arm64"}
    runs = "\n".join(s.get("run", "") for job in jobs.values() for s in job["steps"])
    assert 'cosign sign --yes "$IMAGE"' in runs and 'cosign sign --yes "$REGISTRY/charts/imgflow@' in runs
    assert 'helm push "dist/imgflow-$version.tgz" "oci://$REGISTRY/charts"' in runs

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert values["image"]["tag"] == ""  # the chart's appVersion, the release tag's version
    for member in members:
        assert values[member]["image"]["repository"] == f"{registry}/imgflow-{member}", member
        assert values[member]["image"]["tag"] == "", member
    assert re.fullmatch(r"\d+\.\d+\.\d+", app_version)
