"""Whether this API process has been told to stop (SIGTERM, as the kubelet does after a pod's
preStop): its open event streams then end, so their clients resume with Last-Event-ID on another
replica at once instead of being cut when uvicorn's graceful shutdown runs out (20 s)."""

from __future__ import annotations

import threading

# set from uvicorn's signal handler, read by the streams: a threading.Event is safe from both
_stopping = threading.Event()


def begin() -> None:
    _stopping.set()


def requested() -> bool:
    return _stopping.is_set()
