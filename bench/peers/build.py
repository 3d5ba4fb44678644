"""Builds the image servers imgflow is compared with, from the package registries, once: later runs
find them under ``~/.cache/imgflow/bench-peers/`` and cost nothing.

- imaginary ``v1.2.4`` from the Go module proxy. ``go install …@v1.2.4`` fails on a proxy without
  the module's version list, so the module is downloaded (``go mod download``), copied out of the
  read-only module cache and built in its own directory (cgo against Debian's ``libvips-dev``,
  installed with apt-get when missing and we may).
- thumbor ``7.8.0`` from PyPI, in a virtual environment of its own (``uv venv`` + ``uv pip
  install``), not in the project's lock.

A peer that cannot be built is reported with the reason and left out; the bench goes on.

    python -m bench.peers.build
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

CACHE = Path.home() / ".cache" / "imgflow" / "bench-peers"
IMAGINARY = "github.com/h2non/imaginary"
IMAGINARY_VERSION = "v1.2.4"
THUMBOR_VERSION = "7.8.0"


class Unavailable(Exception):
    """A peer could not be built here; the message says why."""


def _run(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise Unavailable(f"{' '.join(argv[:3])} failed ({done.returncode}): {tail}")
    return done.stdout


def _libvips_dev() -> None:
    """Debian's libvips-dev, which imaginary's cgo build links against."""
    if shutil.which("pkg-config") and subprocess.run(["pkg-config", "--exists", "vips"]).returncode == 0:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable("libvips-dev is not installed (apt-get install libvips-dev)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "install", "-y", "-q", "libvips-dev"], env=env)


def imaginary() -> Path:
    """The imaginary binary, built if it is not in the cache yet."""
    binary = CACHE / f"imaginary-{IMAGINARY_VERSION}" / "imaginary"
    if binary.is_file():
        return binary
    if not shutil.which("go"):
        raise Unavailable("go is not installed")
    _libvips_dev()
    with tempfile.TemporaryDirectory(prefix="imgflow-imaginary-") as tmp:
        info = json.loads(
            _run(["go", "mod", "download", "-json", f"{IMAGINARY}@{IMAGINARY_VERSION}"], cwd=Path(tmp))
        )
        source = Path(tmp) / "src"
        shutil.copytree(info["Dir"], source)
        for path in [source, *source.rglob("*")]:  # the module cache's copies are read-only
            path.chmod(path.stat().st_mode | stat.S_IWUSR)
        built = source / "imaginary"
        _run(["go", "build", "-o", str(built), "."], cwd=source)
        binary.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(built, binary)
    return binary


def thumbor() -> Path:
    """The thumbor command of its own virtual environment, made if it is not in the cache yet."""
    venv = CACHE / f"thumbor-{THUMBOR_VERSION}"
    command = venv / "bin" / "thumbor"
    done = venv / ".installed"
    if done.is_file() and command.is_file():
        return command
    if not shutil.which("uv"):
        raise Unavailable("uv is not installed")
    shutil.rmtree(venv, ignore_errors=True)
    _run(["uv", "venv", "--quiet", str(venv)])
    _run(
        [
            "uv",
            "pip",
            "install",
            "--quiet",
            "--python",
            str(venv / "bin" / "python"),
            f"thumbor=={THUMBOR_VERSION}",
        ]
    )
    done.write_text(THUMBOR_VERSION + "\n")
    return command


BUILDERS = {"imaginary": imaginary, "thumbor": thumbor}
VERSIONS = {"imaginary": IMAGINARY_VERSION, "thumbor": THUMBOR_VERSION}


def main() -> None:
    for name, build in BUILDERS.items():
        try:
            print(f"bench: peer {name}: {build()}")
        except Unavailable as exc:
            print(f"bench: peer {name} is left out: {exc}")


if __name__ == "__main__":
    main()
