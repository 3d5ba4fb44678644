"""No file handle or temporary file outlives a request in the API or a job in the worker."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from imgflow.core.settings import Settings, StorageBackend
from imgflow.harness import images
from imgflow.harness.client import api_client, submit, wait_finished
from imgflow.harness.servers import Server
from tests.conftest import Processes, make_settings

FORMATS = {
    "jpeg": (images.jpeg, "image/jpeg"),
    "png": (images.png_alpha, "image/png"),
    "webp": (images.webp, "image/webp"),
    "gif": (images.gif, "image/gif"),
    "tiff": (images.tiff, "image/tiff"),
}


def deleted_open_files(pid: int) -> list[str]:
    """Files the process holds open although they are deleted (what fills a pod's /tmp unseen)."""
    held = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.endswith(" (deleted)"):
            held.append(target)
    return held


@pytest.fixture(scope="module")
def stack_on_files(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, mongodb_url: str
) -> Iterator[tuple[Server, Server, str]]:
    """An API and a worker storing files in a directory (what is measured here is the processes,
    and GridFS on FerretDB slows as files accumulate)."""
    settings: Settings = make_settings(
        redis_url,
        mongodb_url,
        storage_backend=StorageBackend.local,
        storage_dir=tmp_path_factory.mktemp("files"),
    )
    procs = Processes(tmp_path_factory.mktemp("logs"))
    try:
        api, base = procs.start_api(settings)
        worker = procs.start_worker(settings)
        yield api, worker, base
    finally:
        procs.stop_all()


@pytest.mark.parametrize("fmt", FORMATS)
async def test_fifty_uploads_leave_no_file_open(stack_on_files: tuple[Server, Server, str], fmt: str) -> None:
    api, worker, base = stack_on_files
    make, content_type = FORMATS[fmt]
    data = make()
    async with api_client(base, timeout=30) as client:
        responses = [
            await submit(client, data, filename=f"x.{fmt}", content_type=content_type, user_id="fd-test")
            for _ in range(50)
        ]
        assert all(r.status_code == 202 for r in responses), [
            r.text for r in responses if r.status_code != 202
        ]
        jobs = await asyncio.gather(*(wait_finished(client, r.json()["jobId"]) for r in responses))
    assert {j["status"] for j in jobs} == {"completed"}
    assert deleted_open_files(api.pid) == []
    assert deleted_open_files(worker.pid) == []
