"""Real servers on loopback for imgflow's local runs and tests: Redis, a MongoDB-wire server, the
API and workers, each a child process with its own log file.

Used by ``scripts/stack.py`` (make demo/up/down), by ``tests/conftest.py`` and by bench/.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from imgflow.core.settings import Settings
from imgflow.harness import ferretdb_pg
from imgflow.harness.paths import ROOT, TOOLS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, *, timeout: float = 60.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Server:
    """A child process and where its output goes."""

    name: str
    argv: list[str]
    log: Path
    env: Mapping[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=ROOT,
                start_new_session=True,  # our Ctrl-C is not theirs; we stop them ourselves
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode

    def wait_exit(self, timeout: float) -> bool:
        """Whether the process ended by itself within ``timeout`` seconds."""
        assert self.process is not None
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL the process and whatever it started (its session: a supervisor's children)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""


def redis_server(workdir: Path, port: int) -> Server:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (make setup installs Debian's redis-server)")
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir)]
    # The append-only file, synced every second: a restart loses at most a second of the queue.
    argv += ["--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no"]
    return Server("redis", argv, workdir / "redis.log")


@dataclass(frozen=True)
class MongoChoice:
    """Which MongoDB-wire server a run uses, and why (the README and the test summary say it)."""

    url: str
    kind: str  # "external", "mongod", "ferretdb-pg" or "ferretdb" (SQLite)
    server: Server | None


def mongodb_kind() -> str:
    """Which MongoDB-wire server ``mongodb_server`` starts: ``MONGODB_URL`` if set ("external"),
    else ``mongod`` if on PATH, else FerretDB from .tools: on Debian's PostgreSQL when installed
    ("ferretdb-pg"), else on SQLite ("ferretdb"; also when ``IMGFLOW_FERRETDB_BACKEND=sqlite``)."""
    if os.environ.get("MONGODB_URL"):
        return "external"
    if shutil.which("mongod"):
        return "mongod"
    if os.environ.get("IMGFLOW_FERRETDB_BACKEND", "pg") != "sqlite" and ferretdb_pg.available():
        return "ferretdb-pg"
    return "ferretdb"


def mongodb_server(workdir: Path, port: int, *, crash_unsafe: bool = False) -> MongoChoice:
    """The MongoDB-wire server ``mongodb_kind`` names, data under ``workdir``. ``crash_unsafe``:
    FerretDB's PostgreSQL without fsync or synchronous commits (``imgflow.harness.ferretdb_pg``), for the
    durability test and bench to show what that loses and saves."""
    kind = mongodb_kind()
    if kind == "external":
        return MongoChoice(os.environ["MONGODB_URL"], kind, None)
    workdir.mkdir(parents=True, exist_ok=True)
    url = f"mongodb://127.0.0.1:{port}"
    if kind == "mongod":
        argv = [
            str(shutil.which("mongod")),
            "--bind_ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--dbpath",
            str(workdir),
        ]
        return MongoChoice(url, kind, Server("mongod", argv, workdir / "mongod.log"))
    ferretdb = TOOLS / "ferretdb"
    if not ferretdb.exists():
        raise RuntimeError("no MongoDB-wire server: run scripts/tools.sh ferretdb (make setup does)")
    if kind == "ferretdb-pg":
        argv = [
            sys.executable,
            "-m",
            "imgflow.harness.ferretdb_pg",
            "--port",
            str(port),
            "--workdir",
            str(workdir),
        ]
        argv += ["--crash-unsafe"] if crash_unsafe else []
        return MongoChoice(url, kind, Server("ferretdb", argv, workdir / "ferretdb.log"))
    argv = [
        str(ferretdb),
        "--handler=sqlite",
        f"--sqlite-url=file:{workdir}/",
        f"--state-dir={workdir}",
        f"--listen-addr=127.0.0.1:{port}",
        "--debug-addr=-",
        "--telemetry=disable",
        "--log-level=warn",
    ]
    return MongoChoice(url, kind, Server("ferretdb", argv, workdir / "ferretdb.log"))


def crash_mongodb(mongo: MongoChoice, workdir: Path) -> None:
    """SIGKILL the MongoDB-wire server that ``mongodb_server(workdir, ...)`` started, with all its
    processes (FerretDB's PostgreSQL too), as a crash would. Its ``server.start()`` starts it
    again on the same data."""
    if mongo.kind == "ferretdb-pg":
        ferretdb_pg.kill(workdir)
    if mongo.server is not None:
        mongo.server.kill()


def describe(kind: str) -> str:
    """How a run names its MongoDB-wire server (test header, `make up`)."""
    return {
        "external": "MONGODB_URL (external)",
        "mongod": "mongod",
        "ferretdb-pg": "FerretDB 1.24.2 on PostgreSQL (Debian's)",
        "ferretdb": "FerretDB 1.24.2 on SQLite",
    }[kind]


@dataclass(frozen=True)
class S3Server:
    """SeaweedFS's master, volume server, filer and S3 gateway in one ``weed server`` process,
    with one identity, so requests are signed and checked as AWS S3 would check them."""

    server: Server
    endpoint: str
    access_key: str
    secret_key: str
    port: int

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 3 s: its filer's graceful stop takes ~15 s more, for data
        that is thrown away."""
        self.server.terminate(timeout=3)

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Until the gateway answers a signed request: it listens before its filer is ready."""
        wait_for_port(self.port, timeout=timeout, process=self.server.process)
        client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(retries={"total_max_attempts": 1}, connect_timeout=2, read_timeout=5),
        )
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.list_buckets()  # type: ignore[attr-defined]  # botocore-stubs types no service
                return
            except (BotoCoreError, ClientError):
                if time.monotonic() > deadline or not self.server.alive:
                    raise RuntimeError(
                        f"SeaweedFS's S3 gateway is not ready:\n{self.server.tail()}"
                    ) from None
                time.sleep(0.2)


def seaweedfs_server(workdir: Path) -> S3Server:
    """``weed server -s3`` on loopback ports with its data under ``workdir``. Every port is named
    (SeaweedFS otherwise derives gRPC ports as HTTP + 10000 and opens fixed Iceberg and Lance
    ports), and telemetry is off and pointed at loopback besides: nothing leaves the machine."""
    weed = TOOLS / "weed"
    if not weed.exists():
        raise RuntimeError("no SeaweedFS: run scripts/tools.sh weed (make setup does)")
    workdir.mkdir(parents=True, exist_ok=True)
    access_key, secret_key = "imgflow" + secrets.token_hex(6), secrets.token_hex(20)
    config = workdir / "s3.json"
    identity = {
        "name": "imgflow",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    config.write_text(json.dumps({"identities": [identity]}))
    ports = {
        name: free_port()
        for name in (
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port",
            "s3.port.grpc",
        )
    }
    argv = [
        str(weed),
        "server",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-dir={workdir}",
        "-filer",
        "-s3",
        f"-s3.config={config}",
        *(f"-{name}={port}" for name, port in ports.items()),
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-filer.localSocket={workdir}/filer.sock",
        f"-s3.localSocket={workdir}/s3.sock",
        "-master.telemetry=false",
        "-master.telemetry.url=http://127.0.0.1:9/",
        # small volumes, as many as the disk holds: every bucket is a collection with volumes of
        # its own, and the default 8 x 30 GB would run out after a bucket or two
        "-master.volumeSizeLimitMB=64",
        "-volume.max=0",
        "-volume.preStopSeconds=0",  # it waits 10 s for peers to notice; here there are none
    ]
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    server = Server("seaweedfs", argv, workdir / "weed.log")
    return S3Server(server, endpoint, access_key, secret_key, ports["s3.port"])


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a child process build exactly these settings."""
    env: dict[str, str] = {}
    for name, value in settings.model_dump(mode="json").items():
        if isinstance(value, dict | list):
            env[f"IMGFLOW_{name.upper()}"] = json.dumps(value)  # what pydantic-settings parses
            continue
        env[f"IMGFLOW_{name.upper()}"] = (
            "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        )
    return env


def api_server(settings: Settings, log: Path, extra_env: Mapping[str, str] | None = None) -> Server:
    env = {**settings_env(settings), **(extra_env or {})}
    return Server("api", [sys.executable, "-m", "imgflow.api"], log, env)


def worker_server(settings: Settings, log: Path, extra_env: Mapping[str, str] | None = None) -> Server:
    env = {**settings_env(settings), **(extra_env or {})}
    return Server("worker", [sys.executable, "-m", "imgflow.worker"], log, env)


@dataclass
class Stack:
    """Redis, a MongoDB-wire server, the API and one worker, started together."""

    settings: Settings
    mongo: MongoChoice
    redis: Server
    api: Server
    worker: Server

    @property
    def servers(self) -> list[Server]:
        """In start order; stop them in reverse, so the worker drains before its backends go."""
        backends = [self.redis] + ([self.mongo.server] if self.mongo.server else [])
        return [*backends, self.api, self.worker]

    def stop(self) -> None:
        for server in reversed(self.servers):
            server.terminate()


def start_stack(settings: Settings, workdir: Path, logs: Path | None = None) -> Stack:
    """Start the whole stack on loopback with ``settings`` (whose API and worker metrics ports
    must be set), data under ``workdir``, logs under ``logs`` (default: ``workdir``). Waits until
    everything listens; if anything fails to start, stops what did start and raises."""
    logs = logs or workdir
    started: list[Server] = []

    def start(server: Server, log_name: str) -> Server:
        server.log = logs / log_name
        started.append(server.start())
        return server

    def wait(server: Server, port: int) -> None:
        try:
            wait_for_port(port, process=server.process)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{server.name} did not start:\n{server.tail()}") from exc

    try:
        redis_port = free_port()
        redis = start(redis_server(workdir / "redis", redis_port), "redis.log")
        mongo = mongodb_server(workdir / "mongo", free_port())
        if mongo.server is not None:
            start(mongo.server, f"{mongo.kind}.log")
        wait(redis, redis_port)
        if mongo.server is not None:
            wait(mongo.server, int(mongo.url.rsplit(":", 1)[1]))
        settings = settings.model_copy(
            update={
                "redis_url": f"redis://127.0.0.1:{redis_port}/0",
                "mongodb_url": mongo.url,
                # a bootstrap admin key of its own, unless one was given
                "admin_key": settings.admin_key or "imgf_admin_" + secrets.token_hex(16),
                # and a key signing its outputs' signedUrl (a new one voids the URLs of the last run)
                "url_signing_key": settings.url_signing_key or secrets.token_urlsafe(32),
            }
        )
        api = start(api_server(settings, logs / "api.log"), "api.log")
        worker = start(worker_server(settings, logs / "worker.log"), "worker.log")
        wait(api, settings.api_port)
        wait(worker, settings.worker_metrics_port)
    except BaseException:
        for server in reversed(started):
            server.terminate()
        raise
    return Stack(settings, mongo, redis, api, worker)
