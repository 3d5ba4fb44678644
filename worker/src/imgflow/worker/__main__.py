"""``imgflow-worker``: consume jobs; serve /metrics and /healthz on IMGFLOW_WORKER_METRICS_PORT."""

from __future__ import annotations

from imgflow.core.sigterm import exit_on_sigterm

exit_on_sigterm()  # first: the imports below take seconds, and a pod may be removed meanwhile

import asyncio
import contextlib
import ctypes
import logging
import os
import sys

import uvicorn
from faststream import FastStream
from faststream.asgi import AsgiFastStream, make_ping_asgi
from prometheus_client import make_asgi_app

from imgflow.core import logs
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


def run() -> Worker:
    """Serve until stopped; the worker, which says whether it stopped only to start again."""
    _fewer_malloc_arenas()
    settings = get_settings()
    logs.configure(settings.log_format)
    logging.getLogger("pyvips").setLevel(logging.WARNING)  # its INFO is a per-operation trace
    worker = Worker(settings)
    if not settings.worker_metrics_port:
        app = FastStream(
            worker.broker,
            on_startup=[worker.prepare],
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
        ],
        on_startup=[worker.prepare],
        on_shutdown=[worker.draining],
        after_startup=[worker.start],
        after_shutdown=[worker.stop],
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
