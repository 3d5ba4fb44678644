"""Upload slots are shared fairly, against a real API process: one key sending slowly holds at most
its share of a replica's uploads (429 past it), so another tenant's upload is still accepted, and
watermark uploads count alike."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from imgflow.core.settings import Settings
from imgflow.harness import images
from imgflow.harness.client import api_client, make_key, submit
from tests.conftest import Processes, make_settings

PER_KEY = 4
REPLICA = 16


@pytest.fixture
def api(processes: Processes, redis_url: str, mongodb_url: str, tmp_path: Path) -> tuple[str, Path]:
    """An API whose uploads are spooled to a directory of the test's own; bodies may pause long
    enough for the test to look at what the stalled ones hold."""
    spool = tmp_path / "spool"
    spool.mkdir()
    settings: Settings = make_settings(
        redis_url,
        mongodb_url,
        max_concurrent_uploads=REPLICA,
        max_uploads_per_key=PER_KEY,
        upload_idle_timeout_s=60.0,
    )
    _, base = processes.start_api(settings, TMPDIR=str(spool))
    return base, spool


def stalled_upload(base: str, path: str, key: str) -> socket.socket:
    """An upload that sends its headers and the first bytes of its file, then nothing."""
    host, port = base.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(
        (
            f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 100000\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: multipart/form-data; boundary=slow\r\n\r\n"
            '--slow\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + images.png_alpha(8, 8)[:16]
    )
    return sock


def answer(sock: socket.socket, within: float) -> str | None:
    """The status line the server sent within ``within`` seconds, or None if it is still waiting."""
    sock.settimeout(within)
    try:
        data = sock.recv(65536)
    except TimeoutError:
        return None
    except ConnectionResetError:
        return "reset"
    return data.split(b"\r\n", 1)[0].decode()


async def writer_key(base: str, tenant: str) -> str:
    async with api_client(base, timeout=30) as admin:
        return await make_key(admin, tenant, "jobs:write", "jobs:read", createPerS=100, createBurst=100)


async def test_one_key_sending_slowly_leaves_uploads_to_other_tenants(api: tuple[str, Path]) -> None:
    base, spool = api
    greedy, other = await writer_key(base, "greedy"), await writer_key(base, "patient")
    slow = [stalled_upload(base, "/api/image-processing/jobs", greedy) for _ in range(REPLICA)]
    try:
        await asyncio.sleep(2.0)  # refusals are sent at once
        answers = [answer(sock, 0.1) for sock in slow]
        assert answers.count(None) == PER_KEY, answers  # these are still being received
        assert all(a is None or " 429 " in a for a in answers), answers
        assert len(list(spool.iterdir())) == PER_KEY

        async with api_client(base, key=other, timeout=30) as client:
            accepted = await submit(client, images.jpeg(64, 64))
            assert accepted.status_code == 202, accepted.text
        async with api_client(base, key=greedy, timeout=30) as client:
            refused = await submit(client, images.jpeg(64, 64))
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"]
            assert "this key" in refused.json()["detail"]
    finally:
        for sock in slow:
            sock.close()


async def test_watermark_uploads_take_slots_too(api: tuple[str, Path]) -> None:
    base, spool = api
    greedy = await writer_key(base, "marker")
    slow = [stalled_upload(base, "/api/watermarks", greedy) for _ in range(40)]
    try:
        await asyncio.sleep(2.0)  # refusals are sent at once
        answers = [answer(sock, 0.1) for sock in slow]
        assert answers.count(None) == PER_KEY, answers
        assert all(a is None or " 429 " in a for a in answers), answers
        assert len(list(spool.iterdir())) <= PER_KEY
    finally:
        for sock in slow:
            sock.close()
