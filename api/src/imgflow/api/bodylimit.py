"""Every request body is bounded before anything else runs: in size, and in the time it may take.

A multipart upload may be up to ``max_upload_bytes`` (plus its form around the file; uploads.py
checks the file itself), any other body up to ``max_json_bytes``. A declared Content-Length past
the bound is answered 413 at once, before authentication; a chunked body is counted as it
arrives and cut at the bound, so nothing bigger is ever buffered. A body must keep coming: a pause
longer than ``upload_idle_timeout_s``, or a whole body slower on average than
``upload_min_bytes_per_s`` (after one idle period's grace), is answered 408. Both answers close
the connection, so the rest of the body is not read.
"""

from __future__ import annotations

import asyncio

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgflow.api.multipart import MAX_FORM_OVERHEAD, too_large
from imgflow.api.problems import Problem, problem_response
from imgflow.core.settings import Settings


def body_too_large(limit: int) -> Problem:
    return Problem(
        413,
        "Request body too large",
        f"A request body other than a multipart upload may hold {limit:,} bytes.",
        headers={"Connection": "close"},
        limit=limit,
    )


def too_slow(settings: Settings, deadline_s: float) -> Problem:
    return Problem(
        408,
        "Request timeout",
        f"The request body stalled for {settings.upload_idle_timeout_s:g} s or took longer than "
        f"{deadline_s:g} s (the slowest accepted rate is {settings.upload_min_bytes_per_s:,} bytes/s); "
        "nothing was kept.",
        headers={"Connection": "close"},
    )


def body_deadline_s(settings: Settings, size: int) -> float:
    """Time a body of ``size`` bytes may take: one idle period, then the slowest accepted rate."""
    return settings.upload_idle_timeout_s + size / settings.upload_min_bytes_per_s


def upload_deadline_s(settings: Settings) -> float:
    """The longest an accepted upload may take: a largest-size form at the slowest accepted rate."""
    return body_deadline_s(settings, settings.max_upload_bytes + MAX_FORM_OVERHEAD)


class BoundedBodies:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        settings = self.settings
        headers = Headers(scope=scope)
        multipart = headers.get("content-type", "").lower().startswith("multipart/form-data")
        limit = settings.max_upload_bytes + MAX_FORM_OVERHEAD if multipart else settings.max_json_bytes
        declared = _content_length(headers)
        if declared is not None and declared > limit:
            problem = too_large(settings.max_upload_bytes) if multipart else body_too_large(limit)
            problem.headers["Connection"] = "close"
            await problem_response(Request(scope), problem)(scope, receive, send)
            return
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        if not declared and not chunked:  # no body: nothing to bound
            await self.app(scope, receive, send)
            return

        loop = asyncio.get_running_loop()
        deadline_s = body_deadline_s(settings, declared or limit)
        deadline = loop.time() + deadline_s
        received = 0
        complete = False

        async def bounded_receive() -> Message:
            nonlocal received, complete
            if complete:  # the body is in: what follows is a wait for the client's disconnect
                return await receive()
            wait = min(settings.upload_idle_timeout_s, deadline - loop.time())
            try:
                async with asyncio.timeout(max(wait, 0)):
                    message = await receive()
            except TimeoutError:
                raise too_slow(settings, deadline_s) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise too_large(settings.max_upload_bytes) if multipart else body_too_large(limit)
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, bounded_receive, send)


def _content_length(headers: Headers) -> int | None:
    value = headers.get("content-length")
    return int(value) if value is not None and value.isascii() and value.isdigit() else None
