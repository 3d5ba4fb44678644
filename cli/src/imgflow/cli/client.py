"""The HTTP API as the client sees it: one ``httpx.AsyncClient`` with the key, answers checked for
problem details, and 409/429/503 answers that carry ``Retry-After`` retried after that long."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import httpx

from imgflow.cli.config import Config

JOBS = "/api/image-processing/jobs"
# 409: this Idempotency-Key's first request is still being accepted; 429: a rate or the tenant's
# cap; 503: the server or a backing service is busy. Each says when to come back.
RETRIED = frozenset({409, 429, 503})
MAX_WAIT_S = 600.0  # all the waits of one request, together
LONGEST_PAUSE_S = 60.0


def segment(value: str) -> str:
    """``value`` as one path segment (a userId may hold a slash)."""
    return quote(value, safe="")


class ApiError(Exception):
    """An answer of 400 or more, with the problem details the API sends (RFC 9457)."""

    def __init__(self, status: int, title: str, detail: str, body: Any = None) -> None:
        super().__init__(f"{status} {title}: {detail}" if detail else f"{status} {title}")
        self.status = status
        self.title = title
        self.detail = detail
        self.body = body

    @classmethod
    def of(cls, response: httpx.Response) -> ApiError:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "title" in body:
            return cls(response.status_code, str(body["title"]), str(body.get("detail", "")), body)
        return cls(response.status_code, response.reason_phrase, response.text[:200].strip(), body)


class Unreachable(Exception):
    """No answer from the API at all (refused, timed out, name unknown)."""


def retry_after(response: httpx.Response) -> float | None:
    """The answer's Retry-After in seconds (delay-seconds or an HTTP date), if it has one."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Api:
    """One API, one key. ``on_wait`` hears of every pause a Retry-After asked for."""

    def __init__(self, config: Config, on_wait: Callable[[str], None] | None = None) -> None:
        headers = {"User-Agent": "imgflow-cli"}
        if config.api_key:
            headers["Authorization"] = f"Bearer {config.api_key}"
        self.base_url = config.api_url
        self.http = httpx.AsyncClient(
            base_url=config.api_url, headers=headers, timeout=httpx.Timeout(30.0, connect=10.0)
        )
        self.on_wait = on_wait

    async def __aenter__(self) -> Api:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.http.aclose()

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The answer, after as many waits as the server asks for (up to MAX_WAIT_S in all);
        an answer of 400 or more raises ApiError."""
        waited = 0.0
        while True:
            try:
                response = await self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                raise Unreachable(f"cannot reach {self.base_url}: {exc or type(exc).__name__}") from exc
            pause = retry_after(response) if response.status_code in RETRIED else None
            if pause is None or waited + pause > MAX_WAIT_S:
                break
            pause = min(pause, LONGEST_PAUSE_S)
            if self.on_wait is not None:
                problem = ApiError.of(response)
                self.on_wait(f"{method} {path}: {problem.status} {problem.title}; retrying in {pause:g} s")
            await asyncio.sleep(pause)
            waited += pause
        if response.status_code >= 400:
            raise ApiError.of(response)
        return response

    async def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return (await self.request(method, path, **kwargs)).json()

    @asynccontextmanager
    async def stream(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        """A response whose body is read as it comes (an event stream); not retried."""
        try:
            async with self.http.stream(method, path, **kwargs) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise ApiError.of(response)
                yield response
        except httpx.TransportError as exc:
            raise Unreachable(f"cannot reach {self.base_url}: {exc or type(exc).__name__}") from exc
