"""imgflow on loopback: ``python -m scripts.stack demo|up|down`` (what `make demo/up/down` run).

demo  starts Redis, the MongoDB-wire server, the API and a worker in a temporary directory,
      submits sample images through the HTTP API, prints each job's outcome, and stops it all.
up    starts the same stack in the background under .run/ (API on http://127.0.0.1:8000 unless
      IMGFLOW_API_PORT says otherwise); `down` stops exactly what `up` started.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
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


def samples() -> dict[str, tuple[bytes, dict[str, str]]]:
    """Sample uploads made on the spot: name -> (bytes, extra form fields)."""
    photo = pyvips.Image.xyz(1600, 1200)
    photo = (photo[0] * 0.15 + photo[1] * 0.1).cast("uchar")
    rgb = photo.bandjoin([(255 - photo).cast("uchar"), (photo / 2).cast("uchar")]).copy(interpretation="srgb")
    alpha = pyvips.Image.xyz(640, 480)[0].linear(255 / 640, 0).cast("uchar")
    with_alpha = rgb.crop(0, 0, 640, 480).bandjoin(alpha)
    # four frames of the photo, each shifted: an animation
    frames = [rgb.crop(i * 40, 0, 320, 240) for i in range(4)]
    animation = pyvips.Image.arrayjoin(frames, across=1).copy()
    animation.set_type(pyvips.GValue.gint_type, "page-height", 240)
    return {
        "photo.jpg (1600x1200 JPEG)": (bytes(rgb.jpegsave_buffer(Q=90)), {}),
        "photo.jpg (preset card: 2 variants)": (bytes(rgb.jpegsave_buffer(Q=90)), {"preset": "card"}),
        "moving.gif (4 frames, animated webp)": (bytes(animation.gifsave_buffer()), {"format": "webp"}),
        "logo.png (PNG with alpha, 200x100 webp)": (
            bytes(with_alpha.pngsave_buffer()),
            {"width": "200", "height": "100", "fit": "inside", "format": "webp"},
        ),
        "scan.tif (TIFF, contain)": (bytes(rgb.tiffsave_buffer()), {"fit": "contain", "width": "160"}),
        "notes.jpg (text, refused)": (b"not an image at all, whatever the name says\n", {}),
    }


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
        print(f"  API key for tenant 'demo' (jobs:write, jobs:read): {key}\n")
        with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {key}"}) as client:
            accepted: dict[str, str] = {}
            completed = 0
            for name, (data, fields) in samples().items():
                reply = client.post(
                    "/api/image-processing/jobs",
                    files={"file": (name.split()[0], data, "application/octet-stream")},
                    data={"userId": "demo", **fields},
                )
                body = reply.json()
                if reply.status_code == 202:
                    accepted[name] = body["jobId"]
                    print(f"  submitted {name:42} -> {reply.status_code} job {body['jobId']}")
                else:
                    print(f"  submitted {name:42} -> {reply.status_code} {body['title']}: {body['detail']}")
            print()
            deadline = time.monotonic() + 120
            for name, job_id in accepted.items():
                while True:
                    job = client.get(f"/api/image-processing/jobs/{job_id}").json()
                    if job["status"] in ("completed", "failed") or time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
                if job["status"] == "completed":
                    completed += 1
                    result = job["result"]
                    size = len(client.get(result["thumbnailUrl"]).content)
                    print(
                        f"  {name:42} {job['status']:9} {result['width']}x{result['height']} "
                        f"{result['format']} {size} bytes at {base}{result['thumbnailUrl']}"
                    )
                    for variant, made in list((result.get("variants") or {}).items())[1:]:
                        print(
                            f"  {'  + variant ' + variant:42} {'':9} {made['width']}x{made['height']} "
                            f"{made['format']} {made['bytes']} bytes at {base}{made['url']}"
                        )
                else:
                    print(f"  {name:42} {job['status']:9} {job.get('error', '')}")
            listing = client.get("/api/image-processing/users/demo/jobs").json()
            print(f"\n  GET /api/image-processing/users/demo/jobs: {len(listing['jobs'])} jobs, newest first")
        return 0 if accepted and completed == len(accepted) else 1
    finally:
        stack.stop()
        print("\nstopped everything")


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
