"""CPU of the local node's pods, read from their cgroups (the kubelet's ``cgroupfs`` driver, cgroup
v1), and the arithmetic of images per core; bench/node_scaleout.py measures with it.

- ``pods_cpu_s``: CPU seconds so far of pods (``cpuacct.usage``), summed by component;
- ``pods_waited_s``, ``waited_s``: seconds their threads waited for a CPU while runnable (the
  kernel's schedstat), the sign of a machine with more runnable threads than cores;
- ``quota_cores``, ``throttled_s``: the CPU limit a pod's cgroup enforces and how long it held
  the pod back;
- ``cpu_limited``: a process of the host in a cgroup of its own under the node's root, limited to
  some cores as a pod's CPU limit is;
- ``Measured``, ``granted_cores``, ``per_core``: images/s per core the limits give.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

CGROUPS = Path("/sys/fs/cgroup")


@dataclass
class Measured:
    """One server making ``images`` outputs in ``elapsed_s`` under a closed loop."""

    images: int
    elapsed_s: float
    # over the timed images: CPU seconds by process or component, and "<name> waited": seconds its
    # threads waited for a CPU while runnable (the kernel's schedstat)
    cpu_s: dict[str, float]


def granted_cores(replicas: int, limit_cores: float, machine_cores: int) -> float:
    """The cores the workers' CPU limits give them together: never more than the machine has."""
    return min(replicas * limit_cores, float(machine_cores))


def per_core(run: Measured, cores: float, cpu_of: str) -> dict[str, float]:
    """images/s, images/s per granted core, CPU ms per image of ``cpu_of`` and how many cores it
    kept busy on average."""
    rate = run.images / run.elapsed_s
    cpu = run.cpu_s.get(cpu_of, 0.0)
    return {
        "images_per_s": rate,
        "cores": cores,
        "per_core": rate / cores,
        "cpu_ms_per_image": 1000 * cpu / run.images,
        "busy_cores": cpu / run.elapsed_s,
    }


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, 0.0) for k in after}


def pod_cgroup(controller: str, uid: str) -> Path:
    """The pod's cgroup in one v1 hierarchy, under the node's cgroup root (the kubelet's
    ``cgroupfs`` driver: kubepods[/<qos class>]/pod<uid>)."""
    found = [*CGROUPS.glob(f"{controller}/imgflow-*/kubepods/pod{uid}")]
    found += CGROUPS.glob(f"{controller}/imgflow-*/kubepods/*/pod{uid}")
    if len(found) != 1:
        raise RuntimeError(f"pod {uid}: {len(found)} cgroups in {controller}")
    return found[0]


def pods_cpu_s(uids: dict[str, str]) -> dict[str, float]:
    """CPU seconds so far of the pods, summed by component."""
    cpu = dict.fromkeys(uids.values(), 0.0)
    for uid, component in uids.items():
        cpu[component] += int((pod_cgroup("cpuacct", uid) / "cpuacct.usage").read_text()) / 1e9
    return cpu


def waited_s(pids: list[int], thread: int | None = None) -> float:
    """Seconds the processes' threads (or one ``thread`` of theirs) have waited for a CPU while
    runnable; threads that ended are not counted."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob(f"{thread or '*'}/schedstat"):
            with contextlib.suppress(OSError):
                total += int(task.read_text().split()[1])
    return total / 1e9


def pod_pids(uid: str) -> list[int]:
    cgroup = pod_cgroup("cpu", uid)
    return [int(pid) for procs in cgroup.rglob("cgroup.procs") for pid in procs.read_text().split()]


def client_counters() -> dict[str, float]:
    """CPU and CPU wait of the calling thread: the closed loop's client runs in it."""
    return {"client": time.thread_time(), "client waited": waited_s([os.getpid()], threading.get_native_id())}


def quota_cores(uid: str) -> float:
    """The CPU limit the pod's cgroup enforces, in cores (0: none)."""
    cgroup = pod_cgroup("cpu", uid)
    quota = int((cgroup / "cpu.cfs_quota_us").read_text())
    return quota / int((cgroup / "cpu.cfs_period_us").read_text()) if quota > 0 else 0.0


def pods_waited_s(uids: dict[str, str]) -> dict[str, float]:
    """Seconds the pods' threads have waited for a CPU so far, summed by component."""
    waited = {f"{c} waited": 0.0 for c in uids.values()}
    for uid, component in uids.items():
        waited[f"{component} waited"] += waited_s(pod_pids(uid))
    return waited


def throttled_s(uids: list[str]) -> float:
    """Seconds the pods' CPU limits held them back so far."""
    total = 0
    for uid in uids:
        stat = dict(line.split() for line in (pod_cgroup("cpu", uid) / "cpu.stat").read_text().splitlines())
        total += int(stat.get("throttled_time", 0))
    return total / 1e9


def node_cgroup(uid: str) -> Path:
    """The node's cgroup root in the cpu hierarchy (``imgflow-<id>``, holding ``kubepods``), found
    from one of its pods."""
    return next(p for p in pod_cgroup("cpu", uid).parents if p.parent == CGROUPS / "cpu")


@contextlib.contextmanager
def cpu_limited(pid: int, cores: float, parent: Path) -> Iterator[None]:
    """The process (all its threads) in a cgroup of its own under ``parent``, limited to
    ``cores`` as a pod's CPU limit is; the cgroup goes once the process has ended. Under the
    node's cgroup root the process competes with the rest of the machine for CPU exactly as the
    node's pods do: the node's root is one group among the machine's others, whatever runs in it."""
    cgroup = parent / f"imgflow-bench-scaleout-{pid}"
    cgroup.mkdir()
    try:
        period = int((cgroup / "cpu.cfs_period_us").read_text())
        (cgroup / "cpu.cfs_quota_us").write_text(str(int(cores * period)))
        (cgroup / "cgroup.procs").write_text(str(pid))
        yield
    finally:
        for _ in range(50):  # rmdir fails while the process is still leaving it
            with contextlib.suppress(OSError):
                cgroup.rmdir()
                break
            time.sleep(0.1)
