"""A DNS server on a loopback UDP port, for imgflow's resolver (IMGFLOW_DNS_SERVERS): it answers A
queries with one address, answers that no such name exists, or never answers at all. Lookups in
the tests go to it, never to the machine's own name servers."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

A, IN = 1, 1
NOERROR, NXDOMAIN = 0x8180, 0x8183  # flags of an answer: a response, recursion available, rcode


@dataclass
class NameServer:
    address: str | None = None  # the A record of every name; None: no answer
    missing: bool = False  # answer that no name exists
    queries: int = 0
    sock: socket.socket = field(default_factory=lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM))

    @property
    def spec(self) -> str:
        """The server as IMGFLOW_DNS_SERVERS names it."""
        host, port = self.sock.getsockname()
        return f"{host}:{port}"

    def serve(self) -> None:
        while True:
            try:
                query, client = self.sock.recvfrom(512)
            except OSError:  # closed
                return
            if client is None:  # shut down by name_server
                return
            self.queries += 1
            if self.address is not None or self.missing:
                self.sock.sendto(self._answer(query), client)

    def _answer(self, query: bytes) -> bytes:
        end = query.index(b"\0", 12) + 5  # the question: its name, then type and class
        qtype = struct.unpack("!H", query[end - 4 : end - 2])[0]
        answers = b""
        if qtype == A and self.address is not None:  # AAAA and the rest: no such record
            answers = struct.pack("!HHHIH", 0xC00C, A, IN, 60, 4) + socket.inet_aton(self.address)
        flags = NXDOMAIN if self.missing else NOERROR
        header = query[:2] + struct.pack("!HHHHH", flags, 1, 1 if answers else 0, 0, 0)
        return header + query[12:end] + answers


@contextlib.contextmanager
def name_server(address: str | None = None, *, missing: bool = False) -> Iterator[NameServer]:
    server = NameServer(address, missing)
    server.sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        # close() alone leaves the thread blocked in recvfrom until join gives up; shutdown() wakes
        # it (and says that a UDP socket is not connected)
        with contextlib.suppress(OSError):
            server.sock.shutdown(socket.SHUT_RDWR)
        server.sock.close()
        thread.join(timeout=5)
