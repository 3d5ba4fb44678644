"""Stopping on SIGTERM before a server's own handler is in place.

In a container the process is PID 1, and PID 1 ignores a signal it has no handler for: a pod
removed while its process still imports its libraries or starts would run on until the kubelet
kills it at the end of the grace period (exit 137). Nothing is held before the server serves, so
the process ends at once. uvicorn and kopf put their own handlers in place when they start;
uvicorn puts this one back when it has shut down and raises the signal again, which ends the
process with 0.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType


def exit_on_sigterm() -> None:
    """Make SIGTERM end the process (exit 0) until a server installs its own handler."""
    signal.signal(signal.SIGTERM, _exit)


def _exit(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)
