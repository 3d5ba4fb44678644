"""What every request goes through on its way out: its metrics are recorded, and the RateLimit
headers its route's dependency decided (imgflow.api.deps) are added to the answer.

A plain ASGI middleware: Starlette's ``BaseHTTPMiddleware`` runs each request in an extra task
with stream wrappers, a visible share of the API's CPU per job in a profile of the end-to-end
benchmark (bench/README.md, The API's own cost).
"""

from __future__ import annotations

import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgflow.api import metrics


class Observe:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        started = False

        def record(status: int) -> None:
            # the route template, not the path: one series per endpoint, whatever the ids
            route = getattr(scope.get("route"), "path", "unmatched")
            metrics.LATENCY.labels(scope["method"], route).observe(time.perf_counter() - start)
            metrics.REQUESTS.labels(scope["method"], route, str(status)).inc()

        async def send_observed(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                limits = scope.get("state", {}).get("ratelimit")
                if limits:
                    MutableHeaders(scope=message).update(limits)
                record(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            if not started:  # the app failed before answering: the server answers 500
                record(500)
