"""How many of imgflow's source files a job passes through from accept to completed, counted by
a machine rather than by hand (issue 20 asks for at most 8).

The rule: one job is submitted with ``POST /api/image-processing/jobs`` to an API and a worker
running under a profiler, and waited for in MongoDB (not through the API: a client reading the job
is not its path), submitted by a tenant's key as users do (an admin's job takes no place under the
tenant's cap). A file is crossed when, in either process, one of its functions is called with the
job's id, its ``Job`` or its queue message among its arguments (also inside a list, tuple or set
argument, or in ``**kwargs``), or its code makes such a call to one of imgflow's functions. Files
of the api, core, worker and operator packages count; libraries do not.

``python -m imgflow.harness.jobpath RECORD -- python -m MODULE`` runs ``python -m MODULE`` under
that profiler (threads included), appending ``<job id> <file>`` to RECORD the first time a file
is called with a job; ``trace_one_job`` runs an API and a worker so and reads their records.
"""

from __future__ import annotations

import asyncio
import re
import runpy
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from pymongo import AsyncMongoClient

from imgflow.core.settings import Settings
from imgflow.harness import images
from imgflow.harness.client import api_client, make_key
from imgflow.harness.paths import ROOT
from imgflow.harness.servers import Server, api_server, free_port, wait_for_port, worker_server

MEMBERS = ("api", "core", "worker", "operator")
_JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")  # new_job_id's
_VARARGS, _VARKEYWORDS = 0x04, 0x08  # code flags: the function takes *args, **kwargs
WAIT_S = 60.0  # only stops a hung run; no target


def short_name(filename: str) -> str | None:
    """``core/lifecycle.py`` for ``<root>/core/src/imgflow/core/lifecycle.py``; None if the file
    is not one of imgflow's sources."""
    for member in MEMBERS:
        prefix = f"{ROOT}/{member}/src/imgflow/{member}/"
        if filename.startswith(prefix):
            return f"{member}/{filename.removeprefix(prefix)}"
    return None


def _job_ids(value: Any, classes: tuple[type, ...], depth: int = 0) -> list[str]:
    """The job ids ``value`` is or carries (a job, a message, a collection of them)."""
    if isinstance(value, str):
        return [value] if len(value) == 36 and _JOB_ID.match(value) else []
    if isinstance(value, classes):
        return [str(getattr(value, "job_id", ""))]
    if depth == 0 and isinstance(value, list | tuple | set | frozenset):
        return [found for item in value for found in _job_ids(item, classes, 1)]
    if depth == 0 and isinstance(value, dict):  # **kwargs
        return [found for item in value.values() for found in _job_ids(item, classes, 1)]
    return []


def profiler(out: TextIO) -> Callable[[FrameType, str, Any], None]:
    """A ``sys.setprofile`` function writing each (job id, file) to ``out`` once."""
    from imgflow.core.jobs import Job
    from imgflow.core.queue import JobMessage

    classes = (Job, JobMessage)
    files: dict[str, str | None] = {}  # co_filename -> short name
    seen: set[tuple[str, str]] = set()
    lock = threading.Lock()

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        if event != "call":
            return
        code = frame.f_code
        try:
            name = files[code.co_filename]
        except KeyError:
            name = files[code.co_filename] = short_name(code.co_filename)
        if name is None:
            return
        count = code.co_argcount + code.co_kwonlyargcount
        count += bool(code.co_flags & _VARARGS) + bool(code.co_flags & _VARKEYWORDS)
        values = frame.f_locals
        caller = frame.f_back
        caller_name = short_name(caller.f_code.co_filename) if caller is not None else None
        for arg_name in code.co_varnames[:count]:
            for job_id in _job_ids(values.get(arg_name), classes):
                for crossed in (name, caller_name):
                    if crossed is not None and (job_id, crossed) not in seen:
                        with lock:
                            seen.add((job_id, crossed))
                            out.write(f"{job_id} {crossed}\n")
                            out.flush()

    return profile


def main() -> None:
    """``jobpath RECORD -- python -m MODULE``: run MODULE as ``__main__`` under the profiler."""
    record, command = sys.argv[1], sys.argv[sys.argv.index("--") + 1 :]
    module = command[command.index("-m") + 1]
    out = Path(record).open("a")  # noqa: SIM115 (written until the process ends)
    profile = profiler(out)
    threading.setprofile(profile)
    sys.setprofile(profile)
    sys.argv = [module]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


def traced(server: Server, record: Path) -> Server:
    """``server`` (an API or worker not yet started) run under the profiler, writing ``record``."""
    server.argv = [sys.executable, "-m", "imgflow.harness.jobpath", str(record), "--", *server.argv]
    return server


@dataclass(frozen=True)
class JobPath:
    job_id: str
    files: list[str]  # in the order first crossed: the API's, then the worker's


def files_of(job_id: str, *records: Path) -> list[str]:
    files: list[str] = []
    for record in records:
        for line in record.read_text().splitlines():
            found, name = line.split(" ", 1)
            if found == job_id and name not in files:
                files.append(name)
    return files


async def trace_one_job(settings: Settings, workdir: Path) -> JobPath:
    """Run one job through a traced API and worker on the servers of ``settings`` (``admin_key``
    set), in a stream and database of their own, stop both, and return the files its id crossed."""
    assert settings.admin_key, "the traced API needs an admin key to make a tenant's key with"
    tag = uuid.uuid4().hex[:8]
    settings = settings.model_copy(
        update={
            "api_port": free_port(),
            "worker_metrics_port": free_port(),
            "stream": f"{settings.stream}:jobpath-{tag}",
            "consumer_group": f"jobpath-{tag}",
            "mongodb_database": f"{settings.mongodb_database}_jobpath_{tag}",
        }
    )
    records = (workdir / "jobpath-api.txt", workdir / "jobpath-worker.txt")
    servers = await asyncio.to_thread(_start, settings, workdir, records)
    try:
        job_id = await _submit(settings)
        await _wait_completed(settings, job_id)
    finally:
        # in reverse, each gracefully: the worker's acknowledgement comes after completed
        await asyncio.to_thread(lambda: [server.terminate() for server in reversed(servers)])
    return JobPath(job_id, await asyncio.to_thread(files_of, job_id, *records))


def _start(settings: Settings, workdir: Path, records: tuple[Path, Path]) -> list[Server]:
    """The traced API and worker, listening (stopped again if either fails to start)."""
    workdir.mkdir(parents=True, exist_ok=True)
    started: list[Server] = []
    try:
        for make, record, port in (
            (api_server, records[0], settings.api_port),
            (worker_server, records[1], settings.worker_metrics_port),
        ):
            server = traced(make(settings, record.with_suffix(".log")), record)
            started.append(server.start())
            wait_for_port(port, process=server.process)
    except BaseException:
        for server in reversed(started):
            server.terminate()
        raise
    return started


async def _submit(settings: Settings) -> str:
    assert settings.admin_key
    base_url = f"http://127.0.0.1:{settings.api_port}"
    async with api_client(base_url, key=settings.admin_key, timeout=30) as admin:
        key = await make_key(admin, "jobpath", "jobs:read", "jobs:write")
    async with api_client(base_url, key=key, timeout=30) as client:
        reply = await client.post(
            "/api/image-processing/jobs",
            files={"file": ("photo.jpg", images.jpeg(), "image/jpeg")},
            data={"userId": "jobpath"},
        )
    reply.raise_for_status()
    job_id: str = reply.json()["jobId"]
    return job_id


async def _wait_completed(settings: Settings, job_id: str) -> None:
    mongo: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongodb_url)
    try:
        jobs = mongo[settings.mongodb_database]["jobs"]
        async with asyncio.timeout(WAIT_S):
            while True:
                doc = await jobs.find_one({"_id": job_id}, projection={"status": 1, "error": 1})
                status = (doc or {}).get("status")
                if status == "completed":
                    return
                if status in ("failed", "cancelled"):
                    raise RuntimeError(f"job {job_id} {status}: {(doc or {}).get('error')}")
                await asyncio.sleep(0.05)
    finally:
        await mongo.close()


if __name__ == "__main__":
    main()
