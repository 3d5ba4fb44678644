"""imgflow on loopback: ``python -m scripts.stack demo|up|down`` (what `make demo/up/down` run).

demo  starts Redis, the MongoDB-wire server, the API and a worker in a temporary directory,
      sends sample images with the command-line client (imgflow-cli), which follows each job and
      downloads its outputs, and stops it all.
up    starts the same stack in the background under .run/ (API on http://127.0.0.1:8000 unless
      IMGFLOW_API_PORT says otherwise); `down` stops exactly what `up` started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pyvips

from imgflow.core.settings import AuthMode, Settings
from imgflow.harness.paths import ROOT
from imgflow.harness.servers import describe, free_port, start_stack

RUN_DIR = ROOT / ".run"
STATE = RUN_DIR / "stack.json"


def write_samples(folder: Path) -> None:
    """Sample images made on the spot: a photo, an animation, a PNG with alpha, a TIFF."""
    photo = pyvips.Image.xyz(1600, 1200)
    photo = (photo[0] * 0.15 + photo[1] * 0.1).cast("uchar")
    rgb = photo.bandjoin([(255 - photo).cast("uchar"), (photo / 2).cast("uchar")]).copy(interpretation="srgb")
    alpha = pyvips.Image.xyz(640, 480)[0].linear(255 / 640, 0).cast("uchar")
    with_alpha = rgb.crop(0, 0, 640, 480).bandjoin(alpha)
    # four frames of the photo, each shifted: an animation
    frames = [rgb.crop(i * 40, 0, 320, 240) for i in range(4)]
    animation = pyvips.Image.arrayjoin(frames, across=1).copy()
    animation.set_type(pyvips.GValue.gint_type, "page-height", 240)
    folder.mkdir(parents=True)
    (folder / "photo.jpg").write_bytes(rgb.jpegsave_buffer(Q=90))
    (folder / "moving.gif").write_bytes(animation.gifsave_buffer())
    (folder / "logo.png").write_bytes(with_alpha.pngsave_buffer())
    (folder / "scan.tif").write_bytes(rgb.tiffsave_buffer())


# What the demo runs with the command-line client (imgflow-cli), in a folder holding samples/:
# (what it shows, the command's arguments, the exit code it should end with).
DEMO_RUNS = [
    (
        "every sample as a 200x150 thumbnail",
        ["submit", "samples", "--width", "200", "--height", "150", "--out", "thumbs"],
        0,
    ),
    (
        "the photo as the preset 'card' (two variants)",
        ["submit", "samples/photo.jpg", "--preset", "card", "--out", "card"],
        0,
    ),
    (
        "the GIF, kept animated in WebP",
        ["submit", "samples/moving.gif", "--format", "webp", "--out", "animated"],
        0,
    ),
    ("text named like a JPEG: refused", ["submit", "notes.jpg", "--wait"], 1),
    ("the demo user's jobs", ["jobs", "list", "--limit", "6"], 0),
]


def create_key(base: str, settings: Settings, tenant: str) -> str:
    """A jobs:write + jobs:read key for ``tenant``, made with the stack's bootstrap admin key."""
    reply = httpx.post(
        f"{base}/api/admin/keys",
        json={"tenant": tenant, "scopes": ["jobs:write", "jobs:read"], "name": f"make {tenant}"},
        headers={"Authorization": f"Bearer {settings.admin_key}"},
        timeout=30,
    )
    reply.raise_for_status()
    key: str = reply.json()["key"]
    return key


def demo() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="imgflow-demo-"))
    settings = Settings(api_port=free_port(), worker_metrics_port=free_port(), storage_backend="gridfs")
    print(f"imgflow demo: starting Redis, MongoDB-wire server, API and worker (logs in {workdir})")
    stack = start_stack(settings, workdir)
    settings = stack.settings
    try:
        base = f"http://127.0.0.1:{settings.api_port}"
        print(f"  MongoDB-wire server: {describe(stack.mongo.kind)}; API: {base}")
        key = create_key(base, settings, "demo")
        print(f"  API key for tenant 'demo' (jobs:write, jobs:read): {key}")
        write_samples(workdir / "samples")
        (workdir / "notes.jpg").write_bytes(b"not an image at all, whatever the name says\n")
        env = {**os.environ, "IMGFLOW_API_URL": base, "IMGFLOW_API_KEY": key, "IMGFLOW_USER": "demo"}
        env["IMGFLOW_CONFIG"] = str(workdir / "no-config.toml")  # not the user's own settings
        as_expected = True
        for what, args, expected in DEMO_RUNS:
            print(f"\n# {what}\n$ imgflow {' '.join(args)}", flush=True)
            code = subprocess.run(
                [sys.executable, "-m", "imgflow.cli", *args], cwd=workdir, env=env
            ).returncode
            as_expected = as_expected and code == expected
        print(f"\noutputs in {workdir}")
        return 0 if as_expected else 1
    finally:
        stack.stop()
        print("stopped everything")


def up() -> int:
    if STATE.exists():
        print(f"already up (see {STATE}); `make down` first")
        return 1
    RUN_DIR.mkdir(exist_ok=True)
    # Local files by default: this is a single-host stack, and local storage was the fastest
    # measured (bench/README.md: 33.9 img/s against 25.2 for s3 on SeaweedFS and 10.5 for GridFS,
    # whose chunk lookups FerretDB answers by scanning).
    settings = Settings(
        storage_backend=os.environ.get("IMGFLOW_STORAGE_BACKEND", "local"),
        storage_dir=Path(os.environ.get("IMGFLOW_STORAGE_DIR", RUN_DIR / "files")),
    )
    if not settings.worker_metrics_port:
        settings = settings.model_copy(update={"worker_metrics_port": free_port()})
    stack = start_stack(settings, RUN_DIR)
    settings = stack.settings
    STATE.write_text(json.dumps({s.name: s.pid for s in stack.servers}, indent=2))
    base = f"http://127.0.0.1:{settings.api_port}"
    print(f"imgflow is up: API {base} (docs at /docs)")
    if settings.auth is AuthMode.keys:
        key = create_key(base, settings, "local")
        for name, value in (("api-key", key), ("admin-key", settings.admin_key)):
            secret = RUN_DIR / name
            secret.touch(mode=0o600)
            secret.write_text(f"{value}\n")
        print(f"  API key of tenant 'local' (also in .run/api-key): {key}")
        print("  admin key in .run/admin-key")
    else:
        print("  IMGFLOW_AUTH=off: no API keys; anyone who reaches the API can use it")
    print(f"  Redis {settings.redis_url}, MongoDB-wire ({describe(stack.mongo.kind)}) {settings.mongodb_url}")
    print(f"  worker metrics http://127.0.0.1:{settings.worker_metrics_port}/metrics; logs in {RUN_DIR}/")
    return 0


def down() -> int:
    if not STATE.exists():
        print("nothing is up")
        return 0
    pids: dict[str, int] = json.loads(STATE.read_text())
    # Stop in reverse start order: the worker drains before Redis and MongoDB go away.
    for name, pid in reversed(list(pids.items())):
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(300):
            try:
                os.killpg(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
        print(f"stopped {name} ({pid})")
    STATE.unlink()
    for name in ("api-key", "admin-key"):  # keys of a stack that is gone
        (RUN_DIR / name).unlink(missing_ok=True)
    for data in ("mongo", "files"):
        shutil.rmtree(RUN_DIR / data, ignore_errors=True)
    return 0


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else "demo"
    commands = {"demo": demo, "up": up, "down": down}
    if command not in commands:
        print(__doc__)
        return 2
    return commands[command]()


if __name__ == "__main__":
    sys.exit(main())
