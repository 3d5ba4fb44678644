"""A loopback HTTP server that serves one image and can hold requests back: a job fetching from it
stays ``processing`` for exactly as long as a test wants, which makes "mid-job" deterministic."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class ImageSource:
    body: bytes
    url: str = ""
    requests: int = 0
    hold_first: int = 0  # how many of the first requests wait for ``release``
    fail_first: int = 0  # how many of the first requests answer ``fail_status``
    fail_status: int = 503
    release: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Event = field(default_factory=threading.Event)


@contextmanager
def image_source(
    body: bytes, *, hold_first: int = 0, fail_first: int = 0, fail_status: int = 503
) -> Iterator[ImageSource]:
    source = ImageSource(body, hold_first=hold_first, fail_first=fail_first, fail_status=fail_status)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            source.requests += 1
            number = source.requests
            source.arrived.set()
            if number <= source.hold_first:
                source.release.wait(120)
            if number <= source.fail_first:
                self.send_response(source.fail_status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(source.body)))
            self.end_headers()
            # the fetching worker may have been killed or given up: nobody listens then
            with contextlib.suppress(OSError):
                self.wfile.write(source.body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    source.url = f"http://127.0.0.1:{server.server_address[1]}/photo.jpg"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield source
    finally:
        source.release.set()
        server.shutdown()
        server.server_close()
