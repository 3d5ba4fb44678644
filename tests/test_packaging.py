"""Each deployable installed alone, the way its image installs it, imports and starts.

The suite itself runs in the workspace's virtualenv, which holds every member's dependencies: a
module that imports a package only another member declares passes there and fails in its image
(the worker once imported uvicorn, which only the API declared). Here each member gets a fresh
environment from ``uv sync --no-dev --no-editable --package imgflow-<member>``, every module of
its package is imported, and its entry point is started against the real servers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from imgflow.core.settings import Settings
from imgflow.harness.paths import ROOT
from imgflow.harness.servers import Server, free_port, settings_env, wait_for_port
from tests.conftest import make_settings

MEMBERS = ("api", "worker", "operator")


def install_alone(member: str, venv: Path) -> Path:
    """``uv sync`` of one member into ``venv``, as its Dockerfile runs it; returns its bin/."""
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON": sys.executable}
    done = subprocess.run(
        ["uv", "sync", "--frozen", "--quiet", "--no-dev", "--no-editable", "--package", f"imgflow-{member}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return venv / "bin"


_installed: dict[str, Path] = {}


def installed(member: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The member's bin/, installed once per test session."""
    if member not in _installed:
        _installed[member] = install_alone(member, tmp_path_factory.mktemp(f"venv-{member}"))
    return _installed[member]


@pytest.fixture(params=MEMBERS)
def alone(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    member: str = request.param
    return member, installed(member, tmp_path_factory)


def test_every_module_of_the_member_imports(alone: tuple[str, Path]) -> None:
    member, bin_dir = alone
    walk = (
        "import importlib, pkgutil\n"
        f"import imgflow.{member} as p\n"
        f"names = [m.name for m in pkgutil.walk_packages(p.__path__, 'imgflow.{member}.')]\n"
        "for n in names: importlib.import_module(n)\n"
        "print(len(names))\n"
    )
    # -I: nothing from the working directory or PYTHONPATH, only what the member's install holds.
    done = subprocess.run(
        [str(bin_dir / "python"), "-I", "-c", walk], capture_output=True, text=True, timeout=120, cwd="/"
    )
    assert done.returncode == 0, f"imgflow-{member} installed alone:\n{done.stderr}"
    assert int(done.stdout) >= 3


def test_no_other_member_is_installed(alone: tuple[str, Path]) -> None:
    """The image of one member carries none of the others' code (the operator has no pyvips), nor
    the command-line client or the test harness (members for people's machines, not images)."""
    member, bin_dir = alone
    probe = "import importlib.util as u, sys; print(' '.join(n for n in sys.argv[1:] if u.find_spec(n)))"
    others = [f"imgflow.{m}" for m in MEMBERS if m != member] + ["imgflow.cli", "imgflow.harness"]
    if member == "operator":
        others.append("pyvips")
    done = subprocess.run(
        [str(bin_dir / "python"), "-I", "-c", probe, *others], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


def _start(bin_dir: Path, command: str, settings: Settings, log: Path, env: dict[str, str]) -> Server:
    server = Server(command, [str(bin_dir / command)], log, {**settings_env(settings), **env})
    # Its own PATH and no PYTHONPATH: the workspace's packages must not leak in.
    server.env = {**server.env, "PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": ""}
    return server.start()


@pytest.mark.parametrize("member", ["api", "worker"])
def test_entry_point_serves_its_health_endpoint(
    member: str, redis_url: str, mongodb_url: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    bin_dir = installed(member, tmp_path_factory)
    port = free_port()
    settings = make_settings(redis_url, mongodb_url, api_port=port)
    env = {"IMGFLOW_WORKER_METRICS_PORT": str(port)} if member == "worker" else {}
    server = _start(bin_dir, f"imgflow-{member}", settings, tmp_path / f"{member}.log", env)
    try:
        try:
            wait_for_port(port, process=server.process, timeout=60)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"imgflow-{member} installed alone did not start:\n{server.tail()}") from exc
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).is_success
    finally:
        server.terminate()


def test_operator_entry_point_runs(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Without a cluster the operator cannot watch anything; it must still get as far as saying so."""
    bin_dir = installed("operator", tmp_path_factory)
    done = subprocess.run(
        [str(bin_dir / "imgflow-operator"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "--namespace" in done.stdout
