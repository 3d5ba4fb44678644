"""Host name lookups for the URLs imgflow fetches from or posts to (URL sources, webhook endpoints,
callback URLs), on a resolver of their own.

c-ares (pycares, through aiodns) asks the name servers itself, with its own timeout, all lookups
on one event thread of its own: a lookup holds no thread of the process's pool. There,
``socket.getaddrinfo`` would block a thread for as long as the system resolver waits (seconds per
name server, and it cannot be cancelled), and that pool is the one that probes every upload: a few
URLs whose name server never answers would have stalled uploads. Here at most
``dns_max_concurrent`` lookups run at once per process (more wait their turn) and each gets
``dns_timeout_s`` in all, its wait included. ``dns_servers`` names the servers; empty, c-ares
reads /etc/resolv.conf as the system resolver does (search domains and ndots too), and it answers
``localhost`` and /etc/hosts names without asking.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import weakref
from dataclasses import dataclass

import aiodns
from aiodns.error import DNSError

from imgflow.core.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class LookupFailed(Exception):
    """The name has no address now (it does not exist, or its servers refused)."""


class LookupTimedOut(LookupFailed):
    """No answer within ``dns_timeout_s``."""


@dataclass
class _Resolver:
    resolver: aiodns.DNSResolver
    turns: asyncio.Semaphore


# one per event loop (aiodns binds to the loop it was made in) and per configuration
_resolvers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, float, int], _Resolver]]
_resolvers = weakref.WeakKeyDictionary()


def _resolver(settings: Settings) -> _Resolver:
    config = (settings.dns_servers, settings.dns_timeout_s, settings.dns_max_concurrent)
    made = _resolvers.setdefault(asyncio.get_running_loop(), {})
    if config not in made:
        servers = [server.strip() for server in settings.dns_servers.split(",") if server.strip()]
        made[config] = _Resolver(
            aiodns.DNSResolver(nameservers=servers or None, timeout=settings.dns_timeout_s, tries=1),
            asyncio.Semaphore(settings.dns_max_concurrent),
        )
    return made[config]


def _numeric_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The address of a numeric IPv4 form the system resolver also reads without asking
    ("2130706433", "127.1", "0x7f.1"), which c-ares would send to the name servers instead."""
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, UnicodeError, ValueError):
        return None


async def lookup(host: str, port: int, settings: Settings) -> list[IPAddress]:
    """Every address ``host`` has for a TCP connection to ``port``; raises ``LookupFailed``, or
    ``LookupTimedOut`` after ``dns_timeout_s``."""
    numeric = _numeric_ipv4(host)
    if numeric is not None:
        return [numeric]
    resolver = _resolver(settings)
    try:
        async with asyncio.timeout(settings.dns_timeout_s):
            async with resolver.turns:
                answer = await resolver.resolver.getaddrinfo(host, port=port, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise LookupTimedOut(_too_slow(host, settings)) from None
    except DNSError as exc:
        if exc.args and exc.args[0] == aiodns.error.ARES_ETIMEOUT:
            raise LookupTimedOut(_too_slow(host, settings)) from None
        raise LookupFailed(f"the host name {host!r} does not resolve") from exc
    except UnicodeError as exc:
        raise LookupFailed(f"the host name {host!r} is not a valid name") from exc
    return [ipaddress.ip_address(node.addr[0].decode().split("%", 1)[0]) for node in answer.nodes]


def _too_slow(host: str, settings: Settings) -> str:
    return f"looking up {host!r} took longer than {settings.dns_timeout_s:g} s (IMGFLOW_DNS_TIMEOUT_S)"
