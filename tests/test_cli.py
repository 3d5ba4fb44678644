"""The ``imgflow`` command-line client against the real API and worker: what a person at a
terminal and a script see. Each run is the installed console script in a process of its own."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import shutil
import struct
import subprocess
import sys
import termios
import uuid
from pathlib import Path

import pytest
import pyvips

from imgflow.harness import images
from imgflow.harness.client import ADMIN_KEY, JOBS, api_client, make_key
from imgflow.harness.paths import ROOT
from tests.conftest import Processes, Stack, make_settings

IMGFLOW = [sys.executable, "-m", "imgflow.cli"]
ESCAPE = "\x1b["
NOT_AN_IMAGE = b"not an image at all, whatever the name says\n"


def environment(base_url: str, key: str, home: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without anything that changes how Rich draws or which API is
    used, and this API, key and user; no configuration file."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("IMGFLOW_") and name not in ("FORCE_COLOR", "NO_COLOR", "COLUMNS", "TERM")
    }
    env.update(
        IMGFLOW_API_URL=base_url,
        IMGFLOW_API_KEY=key,
        IMGFLOW_USER="cli-user",
        IMGFLOW_CONFIG=str(home / "no-config.toml"),
        **extra,
    )
    return env


async def imgflow(env: dict[str, str], *args: str | Path) -> subprocess.CompletedProcess[str]:
    """One run of the command with its output in pipes (not a terminal)."""
    argv = [*IMGFLOW, *map(str, args)]
    return await asyncio.to_thread(
        subprocess.run, argv, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def photos(folder: Path, count: int = 3) -> Path:
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"photo-{i}.jpg").write_bytes(images.jpeg(320 + 40 * i, 240))
    return folder


@pytest.fixture
async def env(stack: Stack, tmp_path: Path) -> dict[str, str]:
    """A tenant of its own (so its jobs can be counted) with a jobs:write + jobs:read key."""
    key = await make_key(stack.client, f"cli-{uuid.uuid4().hex[:8]}", "jobs:write", "jobs:read")
    return environment(stack.base_url, key, tmp_path)


async def jobs_of(stack: Stack, env: dict[str, str]) -> list[dict[str, object]]:
    reply = await stack.client.get(
        "/api/image-processing/users/cli-user/jobs",
        params={"limit": 100},
        headers={"Authorization": f"Bearer {env['IMGFLOW_API_KEY']}"},
    )
    assert reply.status_code == 200, reply.text
    listed: list[dict[str, object]] = reply.json()["jobs"]
    return listed


async def test_submit_folder_waits_downloads_and_summarises(env: dict[str, str], tmp_path: Path) -> None:
    folder = photos(tmp_path / "photos")
    out = tmp_path / "thumbs"
    done = await imgflow(env, "submit", folder, "--width", "64", "--height", "48", "--out", out)
    assert done.returncode == 0, done.stdout + done.stderr
    made = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert made == ["photo-0.jpg", "photo-1.jpg", "photo-2.jpg"]
    for name in made:
        thumb = pyvips.Image.new_from_file(str(out / name))
        assert (thumb.width, thumb.height) == (64, 48)
    assert "3 completed" in done.stdout
    for name in made:
        assert f"photos/{name}" in done.stdout  # the summary table names each input
    # not a terminal: plain lines, no colours, no redrawn progress bar
    assert ESCAPE not in done.stdout + done.stderr
    assert "completed photo-0.jpg" in done.stderr


async def test_refused_and_failed_files_fail_the_run_with_the_reason(
    env: dict[str, str], tmp_path: Path
) -> None:
    folder = photos(tmp_path / "photos", count=1)
    (folder / "notes.jpg").write_bytes(NOT_AN_IMAGE)
    (folder / "cut.jpg").write_bytes(images.truncated_jpeg())  # accepted, then fails in the worker
    done = await imgflow(env, "submit", folder, "--wait")
    assert done.returncode == 1, done.stdout + done.stderr
    # the API's problem details, as it answered them (415, its title and detail), and the input
    # marked refused in the summary
    assert "415 Unsupported image: The file is not an image in a supported format" in done.stderr
    [row] = [line for line in done.stdout.splitlines() if "notes.jpg" in line]
    assert "refused" in row and "415 Unsupported image" in row
    [row] = [line for line in done.stdout.splitlines() if "cut.jpg" in line]
    assert "failed" in row
    assert "1 completed, 1 failed, 1 refused" in done.stdout


async def test_rerun_of_the_same_folder_sends_nothing_twice(
    stack: Stack, env: dict[str, str], tmp_path: Path
) -> None:
    folder = photos(tmp_path / "photos")
    out = tmp_path / "thumbs"
    first = await imgflow(env, "submit", folder, "--out", out)
    assert first.returncode == 0, first.stdout + first.stderr
    assert len(await jobs_of(stack, env)) == 3

    again = await imgflow(env, "submit", folder, "--out", out, "--output", "json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(await jobs_of(stack, env)) == 3
    assert [job["status"] for job in json.loads(again.stdout)["jobs"]] == ["completed"] * 3
    assert "accepted" not in again.stderr  # each was known from the state file

    # Without the state file (a run killed before it wrote it) the Idempotency-Key, made from
    # the bytes and options, answers the first jobs instead of making new ones.
    (out / ".imgflow-submit.json").unlink()
    (out / "photo-1.jpg").unlink()
    third = await imgflow(env, "submit", folder, "--out", out)
    assert third.returncode == 0, third.stdout + third.stderr
    assert len(await jobs_of(stack, env)) == 3
    assert (out / "photo-1.jpg").is_file()

    other_options = await imgflow(env, "submit", folder / "photo-0.jpg", "--width", "50", "--out", out)
    assert other_options.returncode == 0, other_options.stdout + other_options.stderr
    assert len(await jobs_of(stack, env)) == 4  # other options are another job


async def test_json_output_parses_for_every_kind_of_command(
    stack: Stack, env: dict[str, str], tmp_path: Path
) -> None:
    folder = photos(tmp_path / "photos", count=1)
    submitted = await imgflow(env, "--output", "json", "submit", folder, "--wait")
    assert submitted.returncode == 0, submitted.stderr
    [job] = json.loads(submitted.stdout)["jobs"]
    assert job["status"] == "completed"

    got = await imgflow(env, "jobs", "get", job["jobId"], "-o", "json")
    assert json.loads(got.stdout)["result"]["width"] == 100
    listed = await imgflow(env, "jobs", "list", "-o", "json")
    assert [j["jobId"] for j in json.loads(listed.stdout)["jobs"]] == [job["jobId"]]
    watched = await imgflow(env, "jobs", "watch", job["jobId"], "-o", "json")
    assert watched.returncode == 0, watched.stderr
    assert json.loads(watched.stdout.splitlines()[-1])["status"] == "completed"
    presets = await imgflow(env, "presets", "-o", "json")
    assert isinstance(json.loads(presets.stdout), dict)
    (tmp_path / "logo.png").write_bytes(images.png_alpha(64, 32))
    uploaded = await imgflow(
        env, "watermarks", "upload", tmp_path / "logo.png", "--name", "logo", "-o", "json"
    )
    assert uploaded.returncode == 0, uploaded.stderr
    mark = json.loads(uploaded.stdout)
    assert (mark["name"], mark["width"], mark["height"]) == ("logo", 64, 32)
    marks = await imgflow(env, "watermarks", "list", "-o", "json")
    assert [m["id"] for m in json.loads(marks.stdout)["watermarks"]] == [mark["id"]]
    deleted = await imgflow(env, "watermarks", "delete", mark["id"], "-o", "json")
    assert json.loads(deleted.stdout) == {"deleted": mark["id"]}


async def test_retry_after_is_honoured(stack: Stack, tmp_path: Path) -> None:
    """A key allowed one create per second, three files sent at once: two are answered 429 with
    Retry-After, waited for and sent again, and every job completes."""
    key = await make_key(
        stack.client, f"cli-{uuid.uuid4().hex[:8]}", "jobs:write", "jobs:read", createPerS=1, createBurst=1
    )
    env = environment(stack.base_url, key, tmp_path)
    folder = photos(tmp_path / "photos")
    done = await imgflow(env, "submit", folder, "--wait", "--concurrency", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "429 Too many requests; retrying in" in done.stderr
    assert "3 completed" in done.stdout
    assert len(await jobs_of(stack, env)) == 3


async def test_configuration_from_a_file_the_environment_and_flags(
    env: dict[str, str], tmp_path: Path
) -> None:
    """The file's settings serve when nothing else is set; the environment wins over the file and
    a flag over the environment."""
    config = tmp_path / "imgflow.toml"
    config.write_text(f'api_url = "{env["IMGFLOW_API_URL"]}"\napi_key = "{env["IMGFLOW_API_KEY"]}"\n')
    bare = {k: v for k, v in env.items() if k not in ("IMGFLOW_API_URL", "IMGFLOW_API_KEY")}
    bare["IMGFLOW_CONFIG"] = str(config)
    from_file = await imgflow(bare, "jobs", "list", "-o", "json")
    assert from_file.returncode == 0, from_file.stderr
    assert json.loads(from_file.stdout) == {"jobs": []}

    revoked_looking = "imgf_0123456789abcdef_" + "A" * 43
    from_env = await imgflow({**bare, "IMGFLOW_API_KEY": revoked_looking}, "jobs", "list")
    assert from_env.returncode == 1
    assert "401 Unauthorized" in from_env.stderr
    flagged = await imgflow(
        {**bare, "IMGFLOW_API_KEY": revoked_looking}, "--api-key", env["IMGFLOW_API_KEY"], "jobs", "list"
    )
    assert flagged.returncode == 0, flagged.stderr


async def test_a_job_is_polled_when_its_event_stream_is_refused(
    processes: Processes, redis_url: str, mongodb_url: str, tmp_path: Path
) -> None:
    """An API that allows a key one event stream, which the test holds open on a pending job:
    `jobs watch` is refused its own stream (429), says so, polls, and sees the job complete once
    a worker runs."""
    settings = make_settings(redis_url, mongodb_url, max_streams_per_key=1)
    _, base_url = processes.start_api(settings)
    async with api_client(base_url, timeout=30) as admin:
        key = await make_key(admin, "cli-poll", "jobs:write", "jobs:read")
    env = environment(base_url, key, tmp_path)
    submitted = await imgflow(env, "-o", "json", "submit", photos(tmp_path / "photos", count=1))
    [job] = json.loads(submitted.stdout)["jobs"]
    assert job["status"] == "pending"  # no worker yet
    async with (
        api_client(base_url, key=key, timeout=30) as client,
        client.stream("GET", f"{JOBS}/{job['jobId']}/events") as held,
    ):
        assert held.status_code == 200
        watch = await asyncio.create_subprocess_exec(
            *IMGFLOW,
            "jobs",
            "watch",
            job["jobId"],
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert watch.stderr is not None
        said = (await asyncio.wait_for(watch.stderr.readline(), 60)).decode()
        assert f"polling job {job['jobId']}: no event stream (429" in said
        await asyncio.to_thread(processes.start_worker, settings)
        out, _ = await asyncio.wait_for(watch.communicate(), 120)
    assert watch.returncode == 0
    assert "completed" in out.decode().splitlines()[-1]


async def test_cancel_cancels_a_pending_job_and_says_when_there_is_nothing_to_cancel(
    processes: Processes, redis_url: str, mongodb_url: str, tmp_path: Path
) -> None:
    _, base = processes.start_api(make_settings(redis_url, mongodb_url))  # no worker: jobs wait
    async with api_client(base, timeout=30) as admin:
        key = await make_key(admin, f"cli-{uuid.uuid4().hex[:8]}", "jobs:write", "jobs:read")
    env = environment(base, key, tmp_path)
    submitted = await imgflow(env, "-o", "json", "submit", photos(tmp_path / "photos", count=1))
    [job] = json.loads(submitted.stdout)["jobs"]
    cancelled = await imgflow(env, "-o", "json", "jobs", "cancel", job["jobId"])
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["status"] == "cancelled"
    shown = await imgflow(env, "jobs", "get", job["jobId"])
    assert "cancelled" in shown.stdout
    again = await imgflow(env, "jobs", "cancel", job["jobId"])
    assert again.returncode == 1
    assert "409" in again.stderr and "The job is cancelled: there is nothing to cancel." in again.stderr


async def test_keys_are_created_listed_and_revoked_with_an_admin_key(stack: Stack, tmp_path: Path) -> None:
    admin = environment(stack.base_url, ADMIN_KEY, tmp_path)
    tenant = f"cli-{uuid.uuid4().hex[:8]}"
    created = await imgflow(
        admin, "keys", "create", "--tenant", tenant, "--name", "from the cli", "-o", "json"
    )
    assert created.returncode == 0, created.stderr
    key = json.loads(created.stdout)
    assert sorted(key["scopes"]) == ["jobs:read", "jobs:write"]

    as_tenant = environment(stack.base_url, key["key"], tmp_path)
    assert (await imgflow(as_tenant, "webhooks", "list")).returncode == 0
    listed = await imgflow(admin, "keys", "list", "--tenant", tenant, "-o", "json")
    assert [k["id"] for k in json.loads(listed.stdout)["keys"]] == [key["id"]]

    no_such = await imgflow(as_tenant, "webhooks", "delete", "we_0123456789abcdef")
    assert no_such.returncode == 1
    assert "404 Not found: There is no webhook endpoint 'we_0123456789abcdef'" in no_such.stderr

    assert (await imgflow(admin, "keys", "revoke", key["id"])).returncode == 0
    refused = await imgflow(as_tenant, "webhooks", "list")
    assert refused.returncode == 1
    assert "401" in refused.stderr


async def test_a_key_gets_its_own_job_cost_ceiling(stack: Stack, tmp_path: Path) -> None:
    admin = environment(stack.base_url, ADMIN_KEY, tmp_path)
    tenant = f"cli-{uuid.uuid4().hex[:8]}"
    made = await imgflow(
        admin, "keys", "create", "--tenant", tenant, "--name", "frugal", "--max-job-cost", "2000"
    )
    assert made.returncode == 0, made.stderr
    listed = await imgflow(admin, "keys", "list", "--tenant", tenant, "-o", "json")
    assert [k["limits"]["maxJobCost"] for k in json.loads(listed.stdout)["keys"]] == [2000]


async def test_shell_completion(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "imgflow"  # completion keys on the command's name
    env = {**environment("http://127.0.0.1:1", "", tmp_path), "_IMGFLOW_COMPLETE": "complete_bash"}
    for words, expected in (("imgflow jo", "jobs"), ("imgflow submit --fo", "--format")):
        env.update(COMP_WORDS=words, COMP_CWORD=str(len(words.split()) - 1))
        done = await asyncio.to_thread(
            subprocess.run, [str(script)], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.stdout.split() == [expected], done.stderr


def run_in_terminal(argv: list[str], env: dict[str, str], columns: int = 100) -> tuple[int, str]:
    """``argv`` with a pseudo-terminal as its standard streams; what the terminal received."""
    main, side = os.openpty()
    fcntl.ioctl(side, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    process = subprocess.Popen(argv, stdin=side, stdout=side, stderr=side, env=env, close_fds=True)
    os.close(side)
    received = bytearray()
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the command closed the terminal
            break
        if not chunk:
            break
        received += chunk
    os.close(main)
    return process.wait(timeout=120), received.decode(errors="replace")


async def test_progress_bar_on_a_terminal(env: dict[str, str], tmp_path: Path) -> None:
    folder = photos(tmp_path / "photos")
    terminal = {**env, "TERM": "xterm-256color"}
    argv = [*IMGFLOW, "submit", str(folder), "--out", str(tmp_path / "thumbs")]
    code, screen = await asyncio.to_thread(run_in_terminal, argv, terminal)
    assert code == 0, screen
    assert "━" in screen  # Rich's bar
    assert "3/3" in screen and "100%" in screen
    assert ESCAPE in screen  # drawn, and redrawn in place


def test_installs_alone_from_its_wheel(tmp_path: Path) -> None:
    """What `uv tool install` / `pipx install` do: the wheel and its dependencies in a fresh
    environment, nothing of the workspace (imgflow-core included)."""
    uv = shutil.which("uv")
    assert uv is not None
    built = subprocess.run(
        [uv, "build", "--wheel", "--package", "imgflow-cli", "--out-dir", str(tmp_path / "dist")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "dist").glob("imgflow_cli-*.whl")
    venv = tmp_path / "venv"
    for argv in (
        [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
        [uv, "pip", "install", "--quiet", "--offline", "--python", str(venv / "bin" / "python"), str(wheel)],
    ):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    helped = subprocess.run(
        [str(venv / "bin" / "imgflow"), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert helped.returncode == 0, helped.stderr
    assert "submit" in helped.stdout
    alone = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-I",
            "-c",
            "import importlib.util as u; print(u.find_spec('imgflow.core'))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert alone.stdout.strip() == "None"
