"""A process told to stop while it starts stops by itself, with 0.

Pods are removed at any moment, also while their process still imports its libraries. In a
container the process is PID 1, which ignores SIGTERM until it has a handler: the kubelet then
kills it at the end of the grace period (exit 137, a scale-down test saw it). Here each process
runs as PID 1 of a PID namespace of the test's own and gets SIGTERM from its first moment on. Its
Redis and MongoDB addresses are sockets that listen and never answer, so a process that misses
the signals blocks in its start instead of ending.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imgflow.harness.servers import free_port, settings_env
from tests.conftest import make_settings

GIVE_UP_S = 60.0  # far beyond a start's length: only a process that ignores SIGTERM gets here


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def _namespace_child(unshare_pid: int) -> int | None:
    """The pid (seen from here) of the process ``unshare --fork`` started as PID 1 of its namespace."""
    try:
        children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    except FileNotFoundError:
        return None
    return int(children[0]) if children else None


@pytest.mark.parametrize("module", ["imgflow.api", "imgflow.worker", "imgflow.operator"])
def test_sigterm_while_starting_ends_the_process(module: str, tmp_path: Path) -> None:
    redis, mongo = _listener(), _listener()
    settings = make_settings(
        f"redis://127.0.0.1:{redis.getsockname()[1]}/0",
        f"mongodb://127.0.0.1:{mongo.getsockname()[1]}/?serverSelectionTimeoutMS=600000",
        api_port=free_port(),
        worker_metrics_port=free_port(),
    )
    env = {**os.environ, **settings_env(settings), "IMGFLOW_OPERATOR_NAMESPACE": "imgflow-test"}
    env["KUBECONFIG"] = str(tmp_path / "no-such-kubeconfig")
    log = tmp_path / "process.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-m", module],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + GIVE_UP_S
        while proc.poll() is None and time.monotonic() < deadline:
            child = _namespace_child(proc.pid)
            if child is not None:
                with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                    os.kill(child, signal.SIGTERM)
            time.sleep(0.05)
        ended = proc.poll() is not None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        redis.close()
        mongo.close()
    output = log.read_text(errors="replace")[-3000:]
    assert ended, f"{module} ignored SIGTERM while starting:\n{output}"
    assert proc.returncode == 0, output
