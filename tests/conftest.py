"""Real servers for the suite: one Redis and one MongoDB-wire server per session on loopback ports,
and factories for API and worker processes. Nothing here is a fake: what the tests talk to is
redis-server, FerretDB or mongod, uvicorn and FastStream in child processes.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from imgflow.core.settings import Settings, StorageBackend
from imgflow.harness.client import ADMIN_KEY, api_client
from imgflow.harness.memory_groups import joining
from imgflow.harness.servers import (
    MongoChoice,
    S3Server,
    Server,
    api_server,
    describe,
    free_port,
    mongodb_kind,
    mongodb_server,
    redis_server,
    seaweedfs_server,
    wait_for_port,
    worker_server,
)


@dataclass
class Backends:
    redis_url: str
    redis: Server
    mongo: MongoChoice


@pytest.fixture(scope="session")
def backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backends]:
    root = tmp_path_factory.mktemp("servers")
    redis_port, mongo_port = free_port(), free_port()
    redis = redis_server(root / "redis", redis_port).start()
    mongo = mongodb_server(root / "mongo", mongo_port)
    if mongo.server is not None:
        mongo.server.start()
    try:
        wait_for_port(redis_port, process=redis.process)
        if mongo.server is not None:
            wait_for_port(mongo_port, process=mongo.server.process)
        yield Backends(f"redis://127.0.0.1:{redis_port}/0", redis, mongo)
    finally:
        redis.terminate()
        if mongo.server is not None:
            mongo.server.terminate()


def pytest_report_header(config: pytest.Config) -> str:
    return f"MongoDB-wire server: {describe(mongodb_kind())}"


# The fixtures that start a server; the others that need one (redis_url, stack, workers, ...) are
# built on these, and a test's fixturenames holds every fixture it pulls in, however indirectly.
SERVER_FIXTURES = frozenset({"backends", "s3", "processes"})
CLUSTER_TESTS = (Path(__file__).parent / "kube", Path(__file__).parent / "node")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test is ``unit`` (``pytest -m unit``) when it needs no server: none of SERVER_FIXTURES,
    not a cluster test (tests/kube, tests/node) and not marked ``slow`` (e.g. starts its own)."""
    for item in items:
        if (
            SERVER_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))
            and not any(item.path.is_relative_to(tests) for tests in CLUSTER_TESTS)
            and not item.get_closest_marker("slow")
        ):
            item.add_marker(pytest.mark.unit)


@pytest.fixture(scope="session")
def redis_url(backends: Backends) -> str:
    return backends.redis_url


@pytest.fixture(scope="session")
def mongodb_url(backends: Backends) -> str:
    return backends.mongo.url


def make_settings(redis_url: str, mongodb_url: str, **overrides: object) -> Settings:
    """Settings of their own: a database, stream and consumer group no other test shares."""
    tag = uuid.uuid4().hex[:10]
    values: dict[str, object] = {
        "redis_url": redis_url,
        "mongodb_url": mongodb_url,
        "mongodb_database": f"imgflow_test_{tag}",
        "stream": f"imgflow:test:{tag}",
        "consumer_group": f"workers-{tag}",
        "storage_backend": StorageBackend.gridfs,
        "worker_metrics_port": 0,
        "admin_key": ADMIN_KEY,
        # every job made by a worker, as each test expects of the jobs it submits, whatever an
        # earlier job of the stack made; tests/test_reuse.py turns reuse on
        "reuse_disabled_tenants": "*",
    }
    values.update(overrides)
    return Settings.model_validate(values)


@pytest.fixture
def fresh_settings(redis_url: str, mongodb_url: str) -> Settings:
    return make_settings(redis_url, mongodb_url)


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (SeaweedFS) for the session, started only if a test asks for it."""
    server = seaweedfs_server(tmp_path_factory.mktemp("seaweedfs"))
    server.server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


S3_BUCKET = "imgflow-test"


def on_s3(settings: Settings, s3: S3Server, **overrides: object) -> Settings:
    """``settings`` storing in the session's S3 server, under a key prefix no other test shares
    (one bucket for all: SeaweedFS gives every bucket volumes of its own)."""
    values: dict[str, object] = {
        "storage_backend": StorageBackend.s3,
        "s3_endpoint": s3.endpoint,
        "s3_bucket": S3_BUCKET,
        "s3_prefix": f"t{uuid.uuid4().hex[:10]}/",
        "s3_access_key_id": s3.access_key,
        "s3_secret_access_key": s3.secret_key,
    }
    values.update(overrides)
    return Settings.model_validate({**settings.model_dump(), **values})


@dataclass
class Processes:
    """Starts API and worker processes for a test and stops whatever is left at its end."""

    logs: Path
    started: list[Server] = field(default_factory=list)

    def start_worker(self, settings: Settings, **extra_env: str) -> Server:
        return self.start_worker_in(settings, None, **extra_env)

    def start_worker_in(self, settings: Settings, cgroup: Path | None, **extra_env: str) -> Server:
        """A worker process; with ``cgroup``, it joins that cgroup v1 group before Python starts, so
        all its memory is charged there (as a container's would be)."""
        port = free_port()
        env = {"IMGFLOW_WORKER_METRICS_PORT": str(port), **extra_env}
        return self._start(worker_server, settings, env, port, argv_prefix=joining(cgroup))

    def start_api(self, settings: Settings, **extra_env: str) -> tuple[Server, str]:
        return self.start_api_in(settings, None, **extra_env)

    def start_api_in(self, settings: Settings, cgroup: Path | None, **extra_env: str) -> tuple[Server, str]:
        """An API process; with ``cgroup``, in that cgroup v1 group (as for ``start_worker_in``)."""
        port = free_port()
        settings = settings.model_copy(update={"api_port": port})
        server = self._start(api_server, settings, extra_env, port, argv_prefix=joining(cgroup))
        return server, f"http://127.0.0.1:{port}"

    def _start(
        self,
        make: Callable[..., Server],
        settings: Settings,
        env: dict[str, str],
        port: int,
        argv_prefix: list[str] | None = None,
    ) -> Server:
        """Start a process, wait until it listens on ``port``; its log goes to logs/<name>-<n>.log."""
        name = make.__name__.removesuffix("_server")
        n = sum(1 for s in self.started if s.name == name)
        server = make(settings, self.logs / f"{name}-{n}.log", env)
        server.argv = [*(argv_prefix or []), *server.argv]
        server.start()
        self.started.append(server)
        try:
            wait_for_port(port, process=server.process)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"{name} did not start:\n{server.tail()}") from exc
        return server

    def stop_all(self) -> None:
        for server in reversed(self.started):
            server.kill()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path / "logs")
    yield procs
    procs.stop_all()


class Workers:
    """The ``workers`` fixture: ``workers.start(settings, **extra_env)`` starts one worker process."""

    def __init__(self, processes: Processes) -> None:
        self._processes = processes

    def start(self, settings: Settings, **extra_env: str) -> Server:
        return self._processes.start_worker(settings, **extra_env)


@pytest.fixture
def workers(processes: Processes) -> Workers:
    return Workers(processes)


@dataclass
class Stack:
    """An API and a worker on a settings of their own, and an HTTP client for the API."""

    settings: Settings
    base_url: str
    client: httpx.AsyncClient
    api: Server
    worker: Server


@pytest.fixture(scope="session")
def session_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack-logs")


@pytest.fixture(scope="session")
async def stack(backends: Backends, session_logs: Path) -> AsyncIterator[Stack]:
    """One API and one worker for the whole session: for tests that only submit and read jobs."""
    settings = make_settings(backends.redis_url, backends.mongo.url)
    procs = Processes(session_logs)
    try:
        api, base_url = procs.start_api(settings)
        worker = procs.start_worker(settings)
        async with api_client(base_url, timeout=30) as client:
            yield Stack(settings, base_url, client, api, worker)
    finally:
        procs.stop_all()
