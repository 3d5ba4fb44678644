"""Slow clients are cut off and release what they held, against a real API process: headers sent
a byte at a time, bodies that stall, and more uploads at once than the API takes."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import pytest

from imgflow.core.settings import Settings
from imgflow.harness import images
from imgflow.harness.client import ADMIN_KEY, JOBS, api_client, submit
from tests.conftest import Processes, make_settings

UPLOAD_SLOTS = 2
LIMITS = {
    "request_header_timeout_s": 2.0,
    "upload_idle_timeout_s": 2.0,
    "max_concurrent_uploads": UPLOAD_SLOTS,
}


@pytest.fixture
def slow_api(processes: Processes, redis_url: str, mongodb_url: str, tmp_path: Path) -> tuple[str, int, Path]:
    """An API with short timeouts whose uploads are spooled to a directory of the test's own."""
    spool = tmp_path / "spool"
    spool.mkdir()
    settings: Settings = make_settings(redis_url, mongodb_url, **LIMITS)
    _, base = processes.start_api(settings, TMPDIR=str(spool))
    return base, int(base.rsplit(":", 1)[1]), spool


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.settimeout(30)
    return sock


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes the connection within ``within`` seconds.

    A close is an EOF or a reset: the kernel answers with a reset when the server closes a
    socket that still holds unread bytes the client sent (here, the trickled header bytes).
    """
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


AUTH_HEADER = f"Authorization: Bearer {ADMIN_KEY}"


def upload_head(length: int, boundary: str = "slowboundary") -> bytes:
    return (
        f"POST {JOBS} HTTP/1.1\r\nHost: test\r\nContent-Length: {length}\r\n{AUTH_HEADER}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()


def test_headers_sent_a_byte_at_a_time_are_cut_off(slow_api: tuple[str, int, Path]) -> None:
    _, port, _ = slow_api
    sock = connect(port)
    started = time.monotonic()
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
    closed = False
    for _ in range(20):  # one more header byte a second, for up to 20 s
        try:
            sock.sendall(b"X")
        except OSError:  # the server closed it
            closed = True
            break
        if closed_by_server(sock, 1.0):
            closed = True
            break
    assert closed, "a client trickling its headers kept the connection"
    assert time.monotonic() - started < 20
    sock.close()


def test_a_stalled_body_gets_408_and_its_temp_file_goes(slow_api: tuple[str, int, Path]) -> None:
    _, port, spool = slow_api
    sock = connect(port)
    sock.sendall(upload_head(100_000) + images.jpeg(64, 64)[:500])  # and then nothing more
    time.sleep(0.5)
    assert list(spool.iterdir()), "the upload was not being spooled"
    answer = b""
    while not answer.endswith(b"}"):
        data = sock.recv(65536)
        if not data:
            break
        answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer
    assert b"application/problem+json" in head
    assert "stalled" in json.loads(body)["detail"]
    assert closed_by_server(sock, 5.0)
    sock.close()
    assert list(spool.iterdir()) == []


async def test_uploads_beyond_the_limit_get_503_until_a_slot_frees(slow_api: tuple[str, int, Path]) -> None:
    base, port, _ = slow_api
    stalled = [connect(port) for _ in range(UPLOAD_SLOTS)]
    for sock in stalled:
        sock.sendall(upload_head(100_000) + b"\xff\xd8")
    await asyncio.sleep(0.5)
    async with api_client(base, timeout=30) as client:
        refused = await submit(client, images.jpeg(64, 64))
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] and "uploads already" in refused.json()["detail"]
        for sock in stalled:  # the stalled uploads time out (408) and free their slots
            assert closed_by_server(sock, 10.0)
            sock.close()
        accepted = await submit(client, images.jpeg(64, 64))
        assert accepted.status_code == 202, accepted.text
