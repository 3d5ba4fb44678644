"""Every request body is bounded before anything else runs, against a real API process: a JSON
body past IMGFLOW_MAX_JSON_BYTES answers 413 before authentication and before it is read, a
chunked one is cut at the limit, a caller without a key gets 401 before its body is parsed, and a
body sent slower than IMGFLOW_UPLOAD_MIN_BYTES_PER_S is cut off."""

from __future__ import annotations

import json
import select
import socket
from pathlib import Path

import pytest

from imgflow.harness.client import ADMIN_KEY
from tests.conftest import Processes, make_settings
from tests.test_slow_clients import closed_by_server, connect

MiB = 1024 * 1024
JSON_LIMIT = 64 * 1024  # the default IMGFLOW_MAX_JSON_BYTES


@pytest.fixture
def api(processes: Processes, redis_url: str, mongodb_url: str) -> tuple[int, int]:
    """An API with short body timeouts: its pid and port."""
    settings = make_settings(redis_url, mongodb_url, upload_idle_timeout_s=2.0, upload_min_bytes_per_s=1000)
    server, base = processes.start_api(settings)
    return server.pid, int(base.rsplit(":", 1)[1])


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak) of a process, in KiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0])
    return found


def head(path: str, length: int | None, *, key: str | None = None) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: test", "Content-Type: application/json"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    if key:
        lines.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answered(sock: socket.socket, wait: float) -> bool:
    return bool(select.select([sock], [], [], wait)[0])


def send_until_answered(sock: socket.socket, data: bytes, total: int, piece: int = MiB) -> int:
    """Send ``data``, then up to ``total`` body bytes in pieces, stopping as soon as the server
    answers or closes; the body bytes sent."""
    sock.sendall(data)
    sent = 0
    chunk = b" " * piece
    while sent < total and not answered(sock, 0.5 if sent == 0 else 0):
        try:
            sock.sendall(chunk[: total - sent])
        except OSError:  # the server closed the connection
            break
        sent += min(piece, total - sent)
    return sent


def read_answer(sock: socket.socket, within: float = 30.0) -> tuple[int, dict[str, str], bytes]:
    """The status, headers and body of the server's answer (empty status 0 if none came)."""
    sock.settimeout(within)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            more = sock.recv(65536)
            if not more:
                break
            data += more
        top, _, body = data.partition(b"\r\n\r\n")
        lines = top.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            more = sock.recv(65536)
            if not more:
                break
            body += more
    except TimeoutError:
        return 0, {}, data
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/1.1 ") else 0
    return status, headers, body


def test_a_huge_json_body_without_a_key_gets_413_before_it_is_read(api: tuple[int, int]) -> None:
    pid, port = api
    before = memory_kib(pid)
    total = 200 * MiB
    sock = connect(port)
    sent = send_until_answered(sock, head("/api/webhooks", total), total)
    status, headers, body = read_answer(sock)
    sock.close()
    assert status == 413, (status, body)
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["limit"] == JSON_LIMIT
    assert sent < total, "the answer came only after the whole body was sent"
    after = memory_kib(pid)
    assert after["VmHWM"] - before["VmHWM"] < 4 * 1024, (before, after)
    assert after["VmRSS"] - before["VmRSS"] < 4 * 1024, (before, after)


def test_a_chunked_json_body_is_cut_at_the_limit(api: tuple[int, int]) -> None:
    _, port = api
    sock = connect(port)
    piece = 8 * 1024
    chunk = f"{piece:x}\r\n".encode() + b" " * piece + b"\r\n"
    sock.sendall(head("/api/admin/keys", None, key=ADMIN_KEY))
    for _ in range(JSON_LIMIT // piece + 2):  # past the limit, and the body never ends
        sock.sendall(chunk)
    status, headers, body = read_answer(sock)
    sock.close()
    assert status == 413, (status, body)
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["limit"] == JSON_LIMIT


@pytest.mark.parametrize("key", [None, "not-a-key", "imgf_0123456789abcdef_" + "x" * 43])
def test_invalid_json_without_a_valid_key_gets_401(api: tuple[int, int], key: str | None) -> None:
    _, port = api
    body = b"{not json"
    sock = connect(port)
    sock.sendall(head("/api/admin/keys", len(body), key=key) + body)
    status, headers, answer = read_answer(sock)
    sock.close()
    assert status == 401, (status, answer)
    assert headers["content-type"] == "application/problem+json"
    assert "www-authenticate" in headers


def test_a_json_body_sent_too_slowly_is_cut_off(api: tuple[int, int]) -> None:
    """1000 B/s is the slowest rate this API takes: a body of 2000 bytes sent at 4 B/s, every
    pause shorter than the idle timeout, is cut off long before it ends."""
    _, port = api
    sock = connect(port)
    sock.sendall(head("/api/admin/keys", 2000, key=ADMIN_KEY) + b"{")
    cut = False
    for _ in range(30):  # 4 bytes a second for up to 30 s
        if closed_by_server(sock, 1.0):
            cut = True
            break
        try:
            sock.sendall(b"    ")
        except OSError:
            cut = True
            break
    sock.close()
    assert cut, "a body trickled below the minimum rate kept its connection"
