"""What the machine and its processes are doing, read from /proc (Linux)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, every thread of it, not its children."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and every process under it, counting children it has already
    reaped (a supervisor such as imgflow.harness.ferretdb_pg does no work itself; PostgreSQL forks a
    backend per connection)."""
    parents: dict[int, int] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        stats[int(entry.name)] = fields
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent and child not in tree]
        tree.update(children)
        frontier.extend(children)
    ticks = sum(sum(int(v) for v in stats[p][11:15]) for p in tree if p in stats)
    return ticks / TICK


def machine_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, summed over its cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal; guest is in user
    return (total - idle) / TICK, total / TICK


def status_kb(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status: VmRSS, VmHWM (peak RSS), ..."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


class Usage:
    """CPU the machine spent between ``start()`` and ``stop()``, and how much of it was ours."""

    def __init__(self) -> None:
        self.busy = self.total = 0.0

    def start(self) -> Usage:
        self._busy, self._total = machine_seconds()
        return self

    def stop(self) -> Usage:
        busy, total = machine_seconds()
        self.busy, self.total = busy - self._busy, total - self._total
        return self

    def others(self, ours: float) -> float:
        """Share of the machine's CPU capacity used by processes other than ours."""
        return max(0.0, self.busy - ours) / self.total if self.total else 0.0
