"""``imgflow-worker``: consume jobs; serve /metrics, /healthz and /readyz on IMGFLOW_WORKER_METRICS_PORT."""

from __future__ import annotations

from imgflow.core.sigterm import exit_on_sigterm

exit_on_sigterm()  # first: the imports below take seconds, and a pod may be removed meanwhile

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import sys

import uvicorn
from faststream import FastStream
from faststream.asgi import AsgiFastStream, AsgiResponse, get, make_ping_asgi
from faststream.asgi.handlers import HttpHandler
from faststream.asgi.types import Scope
from prometheus_client import make_asgi_app

from imgflow.core import logs
from imgflow.core.readiness import Readiness, prepare_storage
from imgflow.core.settings import get_settings
from imgflow.worker.app import Worker

M_ARENA_MAX = -8  # mallopt parameter number, from glibc's malloc.h


def _fewer_malloc_arenas() -> None:
    """glibc gives threads malloc arenas of their own, and libvips' threads leave them fragmented:
    two arenas keep a worker's peak RSS well below the default's (bench/studies/README.md, Candidate
    changes to the thumbnail step)."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 2)


def main() -> None:
    worker = run()
    if worker.restart:
        # Start again as a new process image with the same pid: a clean FastStream, a recreated
        # consumer group, and nothing for a supervisor (or `make up`, which has none) to do.
        logging.getLogger("imgflow.worker").warning("starting again")
        os.execv(sys.executable, [sys.executable, "-m", "imgflow.worker"])


def ready(checks: Readiness) -> HttpHandler:
    """/readyz: 200 while MongoDB, Redis and the storage answer (imgflow.core.readiness), 503 and
    which one does not otherwise. /healthz, the liveness probe's, asks the broker alone: a worker
    is not restarted because a backend is away."""

    @get(include_in_schema=False)
    async def readyz(scope: Scope) -> AsgiResponse:
        status, body = await checks.answer()
        return AsgiResponse(json.dumps(body).encode(), status, {"content-type": "application/json"})

    return readyz


def run() -> Worker:
    """Serve until stopped; the worker, which says whether it stopped only to start again."""
    _fewer_malloc_arenas()
    settings = get_settings()
    logs.configure(settings.log_format)
    logging.getLogger("pyvips").setLevel(logging.WARNING)  # its INFO is a per-operation trace
    worker = Worker(settings)

    log = logging.getLogger("imgflow.worker")
    # only with /readyz to answer: a worker without the port serves no probes
    checks = Readiness(settings, "imgflow-worker-ready", log) if settings.worker_metrics_port else None
    preparing: list[asyncio.Task[None]] = []

    async def prepare() -> None:
        # The storage clients are made in the background: a storage that does not answer delays no
        # start (the startup probe's budget), and the first job does not pay for making it.
        preparing.append(asyncio.create_task(prepare_storage(worker.backends.storage, log)))
        if checks is not None:
            preparing.append(asyncio.create_task(checks.prepare()))
        await worker.prepare()

    if checks is None:
        app = FastStream(
            worker.broker,
            on_startup=[prepare],
            on_shutdown=[worker.draining],
            after_startup=[worker.start],
            after_shutdown=[worker.stop],
        )
        worker.request_stop = app.exit
        asyncio.run(app.run())
        return worker
    asgi = AsgiFastStream(
        worker.broker,
        asgi_routes=[
            ("/metrics", make_asgi_app()),
            ("/healthz", make_ping_asgi(worker.broker, timeout=5.0)),
            ("/readyz", ready(checks)),
        ],
        on_startup=[prepare],
        on_shutdown=[worker.draining],
        after_startup=[worker.start],
        after_shutdown=[worker.stop, checks.aclose],
    )
    # uvicorn turns SIGTERM into a lifespan shutdown: FastStream then drains the subscribers.
    server = uvicorn.Server(
        uvicorn.Config(
            asgi,
            host="0.0.0.0",
            port=settings.worker_metrics_port,
            log_level="warning",
            log_config=None,  # uvicorn's loggers write through ours (imgflow.core.logs)
            timeout_graceful_shutdown=int(settings.graceful_timeout_s) + 5,
        )
    )

    def stop() -> None:
        server.should_exit = True

    worker.request_stop = stop
    server.run()
    return worker


if __name__ == "__main__":
    main()
