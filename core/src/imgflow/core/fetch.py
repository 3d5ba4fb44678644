"""Fetching a source URL without letting it reach what it should not.

A URL in an ImageJob is chosen by whoever may create ImageJobs, and the worker that fetches it sits
inside the cluster, next to MongoDB, Redis, the Kubernetes API and the cloud's metadata service. So:

* only ``http`` and ``https``;
* the host must resolve to public internet addresses only: no loopback, private, shared, link-local
  (169.254.169.254 is there), multicast, unspecified or reserved addresses, nor IPv6 addresses that
  embed one (IPv4-mapped, 6to4, Teredo, NAT64), unless ``allow_private_urls`` is set;
* the host is resolved once per hop and the connection goes to the address that was checked, with
  the original name in ``Host`` and TLS SNI, so a second DNS answer cannot swap in another address;
  lookups go through imgflow.core.resolver (no thread held, ``dns_timeout_s`` each);
* redirects are followed by hand, at most ``fetch_max_redirects``, each target checked afresh;
* at most ``max_upload_bytes`` are read, and the whole fetch (every hop) gets ``fetch_timeout_s``.

``FetchRefused`` means policy forbade the fetch; ``FetchFailed`` means it was tried and did not
work. Either one's text is meant for the person who wrote the URL.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from pathlib import Path

import anyio
import httpx

from imgflow.core.resolver import IPAddress, LookupFailed, LookupTimedOut, lookup
from imgflow.core.settings import Settings

AddressPolicy = Callable[[IPAddress], "str | None"]  # why an address is refused, or None

SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_METADATA = {ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_ALLOW_HINT = (
    "imgflow fetches only from public internet addresses "
    "(IMGFLOW_ALLOW_PRIVATE_URLS=true lifts this, for tests and development only)."
)


class FetchError(Exception):
    """The source URL could not be fetched; the text says why, for the person who gave it."""


class FetchRefused(FetchError):
    """Policy forbids fetching this URL: its scheme or its address."""


class FetchFailed(FetchError):
    """The fetch was allowed and tried, but did not work: network, HTTP status, size or time.

    ``transient``: trying again later may work (a timeout, a connection refused or reset, a name
    that does not resolve now, HTTP 408/429/5xx); otherwise (404, too large, too many redirects)
    it will not."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


# HTTP statuses that say "not now" rather than "not this"
TRANSIENT_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def address_refusal(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public internet address, or None if it is one."""
    if ip in _METADATA:
        return "the cloud metadata service address"
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None and (why := address_refusal(embedded)):
            return f"an IPv6 form of {embedded}, {why}"
    checks = (
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a public internet address"),
    )
    return next((why for hit, why in checks if hit), None)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


async def check_url(url: str, settings: Settings) -> None:
    """Raise ``FetchRefused`` if policy forbids fetching ``url``, after looking its host up.

    A name that does not resolve, or not within ``dns_timeout_s``, is not refused here: that may
    pass, and the fetch (or the webhook's delivery) checks again when it connects and says so.
    """
    parsed = _parse(url)
    if settings.allow_private_urls:
        return
    host = parsed.host
    literal = _ip_literal(host)
    if literal is not None:
        _refuse_unless_public(url, host, [literal])
        return
    try:
        addresses = await lookup(host, _port(parsed), settings)
    except LookupFailed:
        return
    _refuse_unless_public(url, host, addresses)


async def fetch_to_file(
    url: str, dest: Path, settings: Settings, *, policy: AddressPolicy | None = None
) -> None:
    """Download ``url`` into ``dest`` under the rules above; ``dest`` is removed if it fails.

    ``policy`` replaces ``address_refusal``: tests use it to let one loopback server stand in for
    a public host, so that what its redirects point at is checked by the real path.
    """
    try:
        async with asyncio.timeout(settings.fetch_timeout_s):
            await _fetch(url, dest, settings, policy or address_refusal)
    except TimeoutError:
        await anyio.Path(dest).unlink(missing_ok=True)
        raise FetchFailed(_too_slow(url, settings), transient=True) from None
    except BaseException:
        await anyio.Path(dest).unlink(missing_ok=True)
        raise


async def _fetch(url: str, dest: Path, settings: Settings, policy: AddressPolicy) -> None:
    current = _parse(url)
    for hop in range(settings.fetch_max_redirects + 1):
        try:
            ip = await _resolve_checked(current, settings, policy)
        except FetchRefused as exc:
            if hop == 0:
                raise
            raise FetchRefused(f"{url} redirected to a URL imgflow may not fetch. {exc}") from None
        # A client per hop: a pooled connection made for one name must not serve another.
        async with httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=None) as client:
            request = client.build_request(
                "GET",
                current.copy_with(host=str(ip)),
                headers={
                    "Host": current.netloc.decode("ascii"),
                    "User-Agent": "imgflow",
                    "Accept": "image/*",
                },
                extensions={"sni_hostname": current.host} if current.scheme == "https" else {},
            )
            try:
                response = await client.send(request, stream=True)
            except httpx.HTTPError as exc:
                raise FetchFailed(f"Could not fetch {current}: {_describe(exc)}.", transient=True) from exc
            try:
                if response.is_redirect:
                    target = current.join(response.headers["location"])
                    if target.scheme not in SCHEMES:
                        raise FetchRefused(
                            f"Refused the redirect from {current} to {target}: "
                            f"only {' and '.join(SCHEMES)} URLs are fetched."
                        )
                    current = target
                    continue
                if response.status_code != 200:
                    raise FetchFailed(
                        f"{current} answered HTTP {response.status_code} {response.reason_phrase}.",
                        transient=response.status_code in TRANSIENT_STATUSES,
                    )
                await _save(response, current, dest, settings)
                return
            finally:
                await response.aclose()
    raise FetchFailed(
        f"{url} redirected more than {settings.fetch_max_redirects} times "
        "(IMGFLOW_FETCH_MAX_REDIRECTS); give the final URL instead."
    )


async def _save(response: httpx.Response, url: httpx.URL, dest: Path, settings: Settings) -> None:
    limit = settings.max_upload_bytes
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise FetchFailed(_too_large(url, limit, int(declared)))
    received = 0
    async with await anyio.open_file(dest, "wb") as out:
        try:
            async for chunk in response.aiter_bytes():
                received += len(chunk)
                if received > limit:
                    raise FetchFailed(_too_large(url, limit, None))
                await out.write(chunk)
        except httpx.HTTPError as exc:
            raise FetchFailed(f"Could not fetch {url}: {_describe(exc)}.", transient=True) from exc


async def post_checked(
    url: str, body: bytes, headers: dict[str, str], settings: Settings, *, timeout_s: float
) -> int:
    """POST ``body`` to ``url`` under the fetch rules (scheme, every resolved address checked, the
    connection made to the checked address), following no redirect; returns the status code.
    Raises ``FetchRefused`` or ``FetchFailed`` (a timeout or a connection error: transient)."""
    target = _parse(url)
    ip = await _resolve_checked(target, settings, address_refusal)
    try:
        async with (
            asyncio.timeout(timeout_s),
            httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=None) as client,
        ):
            response = await client.post(
                target.copy_with(host=str(ip)),
                content=body,
                headers={**headers, "Host": target.netloc.decode("ascii"), "User-Agent": "imgflow"},
                extensions={"sni_hostname": target.host} if target.scheme == "https" else {},
            )
            return response.status_code
    except TimeoutError:
        raise FetchFailed(f"{url} did not answer within {timeout_s:g} s.", transient=True) from None
    except httpx.HTTPError as exc:
        raise FetchFailed(f"Could not reach {url}: {_describe(exc)}.", transient=True) from exc


async def _resolve_checked(url: httpx.URL, settings: Settings, policy: AddressPolicy) -> IPAddress:
    """The address to connect to for ``url``: resolved once, every answer checked."""
    host, shown = url.host, str(url)
    literal = _ip_literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            addresses = await lookup(host, _port(url), settings)
        except LookupTimedOut as exc:
            raise FetchFailed(f"Could not fetch {shown}: {exc}.", transient=True) from exc
        except LookupFailed as exc:
            raise FetchFailed(
                f"Could not fetch {shown}: the host name {host!r} does not resolve.", transient=True
            ) from exc
        if not addresses:
            raise FetchFailed(f"Could not fetch {shown}: the host name {host!r} has no address.")
    if not settings.allow_private_urls:
        # Every answer, not just the one used: a name that also points inside is refused outright.
        _refuse_unless_public(shown, host, addresses, policy)
    return addresses[0]


def _refuse_unless_public(
    url: str, host: str, addresses: list[IPAddress], policy: AddressPolicy = address_refusal
) -> None:
    for ip in addresses:
        why = policy(ip)
        if why is not None:
            where = host if _ip_literal(host) is not None else f"{host} resolves to {ip}, which"
            raise FetchRefused(f"Refused to fetch {url}: {where} is {why}. {_ALLOW_HINT}")


def _parse(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise FetchRefused(f"{url!r} is not a valid URL: {exc}.") from exc
    if parsed.scheme not in SCHEMES:
        shown = f"{parsed.scheme}:" if parsed.scheme else "no scheme"
        raise FetchRefused(
            f"Refused to fetch {url!r}: only {' and '.join(SCHEMES)} URLs are fetched, this one has {shown}."
        )
    if not parsed.host:
        raise FetchRefused(f"Refused to fetch {url!r}: the URL has no host.")
    return parsed


def _port(url: httpx.URL) -> int:
    return url.port or _DEFAULT_PORTS[url.scheme]


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _describe(exc: httpx.HTTPError) -> str:
    text = str(exc)
    return text if text else type(exc).__name__


def _too_slow(url: str, settings: Settings) -> str:
    return (
        f"Fetching {url} took longer than the limit of {settings.fetch_timeout_s:g} s "
        "(IMGFLOW_FETCH_TIMEOUT_S)."
    )


def _too_large(url: httpx.URL, limit: int, declared: int | None) -> str:
    size = f" ({_human(declared)})" if declared is not None else ""
    return (
        f"The source at {url} is larger{size} than the limit of {_human(limit)} (IMGFLOW_MAX_UPLOAD_BYTES)."
    )


def _human(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}".replace(".0 ", " ")
    return f"{n} bytes"
