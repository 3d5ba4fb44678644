"""Webhook receivers on loopback for tests and bench: one that answers (after failing, or late, if
asked), and a tarpit that accepts connections and never answers."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Receiver:
    url: str = ""
    fail_first: int = 0  # answer 500 to this many requests first
    silent: bool = False  # never answer
    answer_after: float = 0.0  # seconds before answering
    calls: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    arrived: list[float] = field(default_factory=list)  # time.monotonic() of each call
    arrived_at: list[float] = field(default_factory=list)  # time.time(), to compare with a server's clock


@contextmanager
def receiver(*, fail_first: int = 0, silent: bool = False, answer_after: float = 0.0) -> Iterator[Receiver]:
    state = Receiver(fail_first=fail_first, silent=silent, answer_after=answer_after)
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.arrived.append(time.monotonic())
            state.arrived_at.append(time.time())
            state.calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
            if state.silent:
                stop.wait(30)
                return
            stop.wait(state.answer_after)
            self.send_response(500 if len(state.calls) <= state.fail_first else 204)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/imgflow"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield state
    finally:
        stop.set()
        server.shutdown()
        server.server_close()


@dataclass
class Tarpit:
    """Accepts connections and never answers (nor reads)."""

    port: int = 0
    held: list[socket.socket] = field(default_factory=list)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


@contextmanager
def tarpit() -> Iterator[Tarpit]:
    state = Tarpit()
    listener = socket.create_server(("127.0.0.1", 0), backlog=200)
    state.port = listener.getsockname()[1]

    def hold() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            state.held.append(conn)

    threading.Thread(target=hold, daemon=True).start()
    try:
        yield state
    finally:
        listener.close()
        for conn in state.held:
            conn.close()
