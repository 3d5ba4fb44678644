"""FerretDB 1.24 on a private PostgreSQL (Debian's), supervised as one server.

    python -m imgflow.harness.ferretdb_pg --port PORT --workdir DIR [--crash-unsafe]

Starts PostgreSQL on a UNIX socket only (no TCP port), initialising its data directory on first
use, then FerretDB on 127.0.0.1:PORT on top of it; stops both on SIGTERM/SIGINT, and stops the
other if either exits. The data survives a restart for the same ``--workdir`` (the failure tests
restart the MongoDB-wire server and expect the jobs to be there), and a crash: PostgreSQL runs
with fsync, synchronous_commit and full_page_writes on, so a write FerretDB acknowledged is on
disk. ``--crash-unsafe`` turns the three off, as this script once did; only the durability test
and bench use it, to show what that loses and what it saves.

Why: FerretDB on SQLite answers every filter by scanning the collection, ~35-75x slower than on
PostgreSQL at 5,000 jobs (bench/studies/store_cost.py, bench/studies/README.md).

PostgreSQL refuses to run as root. As root it runs as the ``postgres`` user (Debian's package
creates it) with its data under /var/tmp/imgflow-pg/, because pytest's temporary directories are
private to root; data directories whose workdir is gone are removed at the next start.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from imgflow.harness.paths import TOOLS

FERRETDB = TOOLS / "ferretdb"
SHARED = Path("/var/tmp/imgflow-pg")


def postgres_bin() -> Path | None:
    """Debian's newest PostgreSQL server binaries, if installed."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name)
    )
    return found[-1].parent if found else None


def available() -> bool:
    return postgres_bin() is not None and FERRETDB.exists()


def _as_postgres_user() -> dict[str, Any]:
    """Popen arguments that run a child as ``postgres`` when we are root (signals then reach
    PostgreSQL itself, which a ``runuser`` in between would not pass on)."""
    if os.geteuid() != 0:
        return {}
    return {
        "user": "postgres",
        "group": "postgres",
        "extra_groups": [],
        "env": {**os.environ, "HOME": "/tmp"},
    }


def _die_with_us() -> None:
    """In the child: be killed when this supervisor dies, even by SIGKILL (the postmaster puts
    itself in a session of its own, out of reach of a kill of ours)."""
    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _stop_stale(data: Path) -> None:
    """A postmaster of an earlier run still holding this data directory: stop it."""
    pidfile = data / "db" / "postmaster.pid"
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError, IndexError):
        pid = int(pidfile.read_text().split()[0])
        os.kill(pid, signal.SIGQUIT)  # immediate shutdown
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.05)


def kill(workdir: Path) -> None:
    """SIGKILL the PostgreSQL of ``workdir``: its postmaster and every process it started, as a
    crash of the database would. Each of its children is in a session of its own, so a kill of the
    supervisor's process group reaches only the postmaster, whose death the children notice late,
    writing WAL meanwhile. The children go first, the postmaster last, so none is restarted."""
    pidfile = data_dir(workdir) / "db" / "postmaster.pid"
    try:
        postmaster = int(pidfile.read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # the command may hold spaces and parentheses; the fields after its last ")" do not
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                children.append(int(stat.parent.name))
    for pid in [*children, postmaster]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def data_dir(workdir: Path) -> Path:
    if os.geteuid() != 0:
        return workdir / "postgres"
    key = hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:16]
    return SHARED / key


def _prune_orphans() -> None:
    """Remove data directories of runs whose workdir is gone and whose server is not running."""
    if not SHARED.is_dir():
        return
    for data in SHARED.iterdir():
        owner = data / "workdir"
        if not owner.exists() or Path(owner.read_text()).exists():
            continue
        pidfile = data / "db" / "postmaster.pid"
        if pidfile.exists():
            with contextlib.suppress(ValueError, OSError):
                os.kill(int(pidfile.read_text().split()[0]), 0)
                continue  # still running
        shutil.rmtree(data, ignore_errors=True)


def prepare(workdir: Path, bin_dir: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    data = data_dir(workdir)
    if os.geteuid() == 0:
        SHARED.mkdir(mode=0o755, parents=True, exist_ok=True)
        _prune_orphans()
    # The data belongs to this workdir only while the workdir holds the same id: a workdir deleted
    # and made again at the same path (a new `make up`) starts empty, as SQLite files would.
    marker = workdir / "ferretdb-pg.id"
    if not marker.exists() or not (data / "id").exists() or marker.read_text() != (data / "id").read_text():
        shutil.rmtree(data, ignore_errors=True)
        marker.write_text(uuid.uuid4().hex)
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    (data / "id").write_text(marker.read_text())
    (data / "workdir").write_text(str(workdir.resolve()))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(data, user.pw_uid, user.pw_gid)
    if not (data / "db" / "PG_VERSION").exists():
        subprocess.run(
            [str(bin_dir / "initdb"), "-D", str(data / "db"), "-A", "trust", "-U", "postgres", "--no-sync"],
            check=True,
            stdout=subprocess.DEVNULL,
            cwd=data,
            **_as_postgres_user(),
        )
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument(
        "--crash-unsafe",
        action="store_true",
        help="fsync, synchronous_commit and full_page_writes off: a kill loses the last commits "
        "(for the durability test and bench only)",
    )
    args = parser.parse_args()
    bin_dir = postgres_bin()
    if bin_dir is None:
        sys.exit("ferretdb_pg: Debian's postgresql is not installed (make setup installs it)")
    data = prepare(args.workdir, bin_dir)

    # synchronous_commit=off answers a commit before its WAL leaves PostgreSQL's shared buffers,
    # which a SIGKILL of its processes takes with them (the walwriter flushes every 200 ms): a job
    # the API accepted would be gone after the restart.
    durability = "off" if args.crash_unsafe else "on"
    settings = [
        f"fsync={durability}",
        f"synchronous_commit={durability}",
        f"full_page_writes={durability}",
        "listen_addresses=",
    ]
    _stop_stale(data)
    postgres = subprocess.Popen(
        [str(bin_dir / "postgres"), "-D", str(data / "db"), "-k", str(data)]
        + [arg for setting in settings for arg in ("-c", setting)],
        cwd=data,
        preexec_fn=_die_with_us,
        **_as_postgres_user(),
    )
    # Until it accepts connections, not merely until its socket exists: after a crash it replays
    # its WAL first, and FerretDB listening meanwhile would answer "the database system is
    # starting up" to whoever connects.
    ready = [str(bin_dir / "pg_isready"), "--quiet", "--host", str(data)]
    deadline = time.monotonic() + 60
    while subprocess.run(ready, check=False).returncode != 0:
        if postgres.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"ferretdb_pg: PostgreSQL did not start (exit {postgres.poll()})")
        time.sleep(0.05)
    ferretdb = subprocess.Popen(
        preexec_fn=_die_with_us,
        args=[
            str(FERRETDB),
            "--handler=pg",
            f"--postgresql-url=postgres://postgres@/postgres?host={data}",
            f"--state-dir={args.workdir}",
            f"--listen-addr=127.0.0.1:{args.port}",
            "--debug-addr=-",
            "--telemetry=disable",
            "--log-level=warn",
        ],
    )

    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping and ferretdb.poll() is None and postgres.poll() is None:
        time.sleep(0.1)
    # FerretDB keeps no state: it need not wait for its clients to hang up
    ferretdb.terminate()
    try:
        ferretdb.wait(1)
    except subprocess.TimeoutExpired:
        ferretdb.kill()
        ferretdb.wait()
    if postgres.poll() is None:
        postgres.send_signal(signal.SIGINT)  # fast shutdown: ends sessions, writes a checkpoint
        try:
            postgres.wait(20)
        except subprocess.TimeoutExpired:
            postgres.kill()
            postgres.wait()
    sys.exit(0 if stopping else 1)


if __name__ == "__main__":
    main()
