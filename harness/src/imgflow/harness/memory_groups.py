"""Processes under a memory limit as a container's: cgroup v1 memory groups, limited to what the chart
gives a pod (``deploy/helm/imgflow/values.yaml``), with no swap to hide in."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import yaml

from imgflow.harness.paths import ROOT

CHART_VALUES = yaml.safe_load((ROOT / "deploy/helm/imgflow/values.yaml").read_text())
UNITS = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
MEMORY_CGROUPS = Path("/sys/fs/cgroup/memory")


def quantity_bytes(quantity: str) -> int:
    for suffix, factor in UNITS.items():
        if quantity.endswith(suffix):
            return int(quantity.removesuffix(suffix)) * factor
    return int(quantity)


def chart_limit(component: str) -> int:
    """The chart's memory limit of ``component`` ("api", "worker"), in bytes."""
    return quantity_bytes(CHART_VALUES[component]["resources"]["limits"]["memory"])


@contextlib.contextmanager
def memory_group(limit: int) -> Iterator[Path]:
    """A new memory group limited to ``limit`` bytes; what is left in it is moved out at the end."""
    assert MEMORY_CGROUPS.is_dir(), "this needs the cgroup v1 memory controller (this machine has it)"
    group = MEMORY_CGROUPS / f"imgflow-test-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    group.mkdir()
    try:
        (group / "memory.limit_in_bytes").write_text(str(limit))
        yield group
    finally:
        for pid in (group / "cgroup.procs").read_text().split():
            with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                (MEMORY_CGROUPS / "cgroup.procs").write_text(pid)
        group.rmdir()


def joining(group: Path | None) -> list[str]:
    """What to run a command with so that it joins ``group`` before it starts (nothing for None)."""
    return [] if group is None else ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh"]


def oom_kills(group: Path) -> int:
    fields = dict(line.split() for line in (group / "memory.oom_control").read_text().splitlines())
    return int(fields.get("oom_kill", 0))


def peak_rss(pid: int) -> int:
    """The process' peak resident memory (VmHWM), in bytes."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return int(status["VmHWM"].split()[0]) << 10


def reset_peak_rss(pid: int) -> None:
    """Let the process' peak resident memory start again from what it holds now."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
