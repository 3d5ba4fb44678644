"""The URL fetch guard, against a real HTTP server on loopback started by the test."""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from imgflow.core.fetch import (
    AddressPolicy,
    FetchFailed,
    FetchRefused,
    address_refusal,
    check_url,
    fetch_to_file,
)
from imgflow.core.resolver import IPAddress
from imgflow.core.settings import Settings
from tests.nameserver import name_server

BODY = b"\xff\xd8\xff" + b"imgflow" * 1000  # only bytes are fetched here; nothing decodes them
_stop = threading.Event()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/image":
            self._send(200, BODY)
        elif url.path == "/redirect":
            self.send_response(int(query.get("code", "302")))
            self.send_header("Location", query["to"])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif url.path == "/big":
            self._send(200, b"x" * int(query["n"]))
        elif url.path == "/big-unannounced":  # no Content-Length: the limit must hold while reading
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            for _ in range(int(query["n"]) // 1024):
                self.wfile.write(b"x" * 1024)
        elif url.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY[:10])
            self.wfile.flush()
            _stop.wait(30)
        else:
            self._send(404, b"no such thing")

    def _send(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True


class V6Server(Server):
    address_family = socket.AF_INET6


def _serve(server: Server) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = str(server.server_address[0]), server.server_address[1]
    yield f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    _stop.set()
    server.shutdown()
    server.server_close()
    _stop.clear()


@pytest.fixture(scope="module")
def origin() -> Iterator[str]:
    yield from _serve(Server(("127.0.0.1", 0), Handler))


@pytest.fixture(scope="module")
def origin6() -> Iterator[str]:
    try:
        server = V6Server(("::1", 0), Handler)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    yield from _serve(server)


def open_settings(**overrides: Any) -> Settings:
    return Settings(allow_private_urls=True, **overrides)


def only(address: str) -> AddressPolicy:
    """A policy under which the test server's address counts as public, and nothing else changes."""
    allowed = ipaddress.ip_address(address)

    def policy(ip: IPAddress) -> str | None:
        return None if ip == allowed else address_refusal(ip)

    return policy


async def test_fetches_when_private_urls_are_allowed(origin: str, tmp_path: Path) -> None:
    dest = tmp_path / "source"
    await fetch_to_file(f"{origin}/image", dest, open_settings())
    assert dest.read_bytes() == BODY


async def test_fetches_over_ipv6_loopback_when_allowed(origin6: str, tmp_path: Path) -> None:
    dest = tmp_path / "source"
    await fetch_to_file(f"{origin6}/image", dest, open_settings())
    assert dest.read_bytes() == BODY


async def test_follows_redirects_within_the_limit(origin: str, tmp_path: Path) -> None:
    dest = tmp_path / "source"
    two_hops = f"{origin}/redirect?to=/redirect%3Fto%3D/image%26code%3D307&code=301"
    await fetch_to_file(two_hops, dest, open_settings(fetch_max_redirects=2))
    assert dest.read_bytes() == BODY


@pytest.mark.parametrize(
    ("url", "what"),
    [
        ("http://127.0.0.1:9/x.jpg", "127.0.0.1 is a loopback address"),
        ("http://10.1.2.3/x.jpg", "10.1.2.3 is a private address"),
        ("http://192.168.0.10/x.jpg", "192.168.0.10 is a private address"),
        ("http://172.16.5.4/x.jpg", "172.16.5.4 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is the cloud metadata service address"),
        ("http://169.254.1.1/x.jpg", "169.254.1.1 is a link-local address"),
        ("http://0.0.0.0/x.jpg", "0.0.0.0 is an unspecified address"),
        ("http://224.0.0.1/x.jpg", "224.0.0.1 is a multicast address"),
        ("http://100.64.0.1/x.jpg", "100.64.0.1 is not a public internet address"),
        ("http://[::1]/x.jpg", "::1 is a loopback address"),
        ("http://[::]/x.jpg", ":: is an unspecified address"),
        ("http://[fe80::1]/x.jpg", "fe80::1 is a link-local address"),
        ("http://[fd00::1]/x.jpg", "fd00::1 is a private address"),
        ("http://[ff02::1]/x.jpg", "ff02::1 is a multicast address"),
        ("http://[::ffff:127.0.0.1]/x.jpg", "an IPv6 form of 127.0.0.1, a loopback address"),
        ("http://[::ffff:169.254.169.254]/", "an IPv6 form of 169.254.169.254, the cloud metadata service"),
        ("http://[2002:a00:1::]/x.jpg", "an IPv6 form of 10.0.0.1, a private address"),
        ("http://[64:ff9b::7f00:1]/x.jpg", "an IPv6 form of 127.0.0.1, a loopback address"),
        ("http://localhost/x.jpg", "localhost resolves to"),
        ("http://2130706433/x.jpg", "resolves to 127.0.0.1, which is a loopback address"),
    ],
)
async def test_private_targets_are_refused_by_default(url: str, what: str, tmp_path: Path) -> None:
    with pytest.raises(FetchRefused) as early:
        await check_url(url, Settings())
    assert what in str(early.value)
    assert "IMGFLOW_ALLOW_PRIVATE_URLS" in str(early.value)  # says how it could be allowed

    dest = tmp_path / "source"
    with pytest.raises(FetchRefused) as late:
        await fetch_to_file(url, dest, Settings())
    assert what in str(late.value)
    assert not dest.exists()


async def test_the_local_server_itself_is_refused_by_default(origin: str, tmp_path: Path) -> None:
    with pytest.raises(FetchRefused, match=r"127\.0\.0\.1 is a loopback address"):
        await fetch_to_file(f"{origin}/image", tmp_path / "source", Settings())


async def test_public_addresses_pass_the_early_check() -> None:
    await check_url("http://8.8.8.8/a.jpg", Settings())
    await check_url("https://[2606:4700:4700::1111]/a.jpg", Settings())


@pytest.mark.parametrize(
    "url",
    ["file:///etc/passwd", "ftp://example.com/a.jpg", "gopher://example.com/", "data:image/png;base64,AA"],
)
async def test_only_http_and_https(url: str, tmp_path: Path) -> None:
    for settings in (Settings(), open_settings()):  # allowing private addresses allows no other scheme
        with pytest.raises(FetchRefused, match="only http and https URLs are fetched"):
            await check_url(url, settings)
        with pytest.raises(FetchRefused, match="only http and https URLs are fetched"):
            await fetch_to_file(url, tmp_path / "source", settings)


async def test_a_url_without_host_is_refused() -> None:
    with pytest.raises(FetchRefused, match="has no host"):
        await check_url("http:///a.jpg", Settings())


async def test_a_redirect_to_a_private_address_is_refused(origin: str, tmp_path: Path) -> None:
    policy = only("127.0.0.1")  # the test server plays a public host; its redirect target does not
    dest = tmp_path / "source"
    await fetch_to_file(f"{origin}/image", dest, Settings(), policy=policy)
    assert dest.read_bytes() == BODY

    for target, what in [
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is the cloud metadata service address"),
        ("http://10.0.0.7/x.jpg", "10.0.0.7 is a private address"),
        ("http://[::1]:1/x.jpg", "::1 is a loopback address"),
    ]:
        with pytest.raises(FetchRefused) as refused:
            await fetch_to_file(f"{origin}/redirect?to={target}", tmp_path / "r", Settings(), policy=policy)
        assert "redirected to a URL imgflow may not fetch" in str(refused.value)
        assert what in str(refused.value)
        assert not (tmp_path / "r").exists()


async def test_a_redirect_to_another_scheme_is_refused(origin: str, tmp_path: Path) -> None:
    with pytest.raises(FetchRefused, match="only http and https URLs are fetched"):
        await fetch_to_file(f"{origin}/redirect?to=file:///etc/passwd", tmp_path / "s", open_settings())


async def test_redirects_beyond_the_limit_fail(origin: str, tmp_path: Path) -> None:
    with pytest.raises(FetchFailed, match="redirected more than 3 times"):
        await fetch_to_file(f"{origin}/loop", tmp_path / "s", open_settings(fetch_max_redirects=3))
    with pytest.raises(FetchFailed, match="redirected more than 0 times"):
        await fetch_to_file(
            f"{origin}/redirect?to=/image", tmp_path / "s", open_settings(fetch_max_redirects=0)
        )


async def test_size_limit_from_content_length(origin: str, tmp_path: Path) -> None:
    dest = tmp_path / "source"
    with pytest.raises(FetchFailed) as failed:
        await fetch_to_file(f"{origin}/big?n=5000", dest, open_settings(max_upload_bytes=4096))
    assert "is larger (4.9 KiB) than the limit of 4 KiB (IMGFLOW_MAX_UPLOAD_BYTES)" in str(failed.value)
    assert not dest.exists()
    await fetch_to_file(f"{origin}/big?n=4096", dest, open_settings(max_upload_bytes=4096))
    assert dest.stat().st_size == 4096


async def test_size_limit_without_content_length(origin: str, tmp_path: Path) -> None:
    dest = tmp_path / "source"
    with pytest.raises(FetchFailed, match="larger than the limit of 64 KiB"):
        await fetch_to_file(
            f"{origin}/big-unannounced?n={1 << 20}", dest, open_settings(max_upload_bytes=65536)
        )
    assert not dest.exists()


async def test_time_limit(origin: str, tmp_path: Path) -> None:
    dest = tmp_path / "source"
    with pytest.raises(FetchFailed) as failed:
        await fetch_to_file(f"{origin}/slow", dest, open_settings(fetch_timeout_s=0.3))
    assert "took longer than the limit of 0.3 s (IMGFLOW_FETCH_TIMEOUT_S)" in str(failed.value)
    assert not dest.exists()


async def test_http_errors_and_unreachable_hosts_fail_readably(origin: str, tmp_path: Path) -> None:
    with pytest.raises(FetchFailed, match="answered HTTP 404 Not Found"):
        await fetch_to_file(f"{origin}/missing", tmp_path / "s", open_settings())
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(FetchFailed, match=f"Could not fetch http://127.0.0.1:{port}/x"):
        await fetch_to_file(f"http://127.0.0.1:{port}/x", tmp_path / "s", open_settings())
    with name_server(missing=True) as dns, pytest.raises(FetchFailed, match="does not resolve"):
        await fetch_to_file(
            "http://no-such-host.invalid/x", tmp_path / "s", open_settings(dns_servers=dns.spec)
        )
