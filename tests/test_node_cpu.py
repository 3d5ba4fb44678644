"""The arithmetic per worker core of the scale-out bench (imgflow.harness.node_cpu)."""

from __future__ import annotations

import pytest

from imgflow.harness.node_cpu import Measured, cpu_delta, granted_cores, per_core


def test_cores_granted_are_the_limits_up_to_the_machines_cores() -> None:
    assert granted_cores(1, 1, 2) == 1
    assert granted_cores(2, 1, 2) == 2
    assert granted_cores(3, 1, 2) == 2  # oversubscribed: three 1-core limits on 2 cores
    assert granted_cores(3, 0.5, 2) == 1.5


def test_per_core_divides_the_rate_by_the_cores_and_the_cpu_by_the_images() -> None:
    run = Measured(images=120, elapsed_s=10.0, cpu_s={"worker": 18.0, "api": 3.0})
    figures = per_core(run, granted_cores(3, 1, 2), "worker")
    assert figures["images_per_s"] == pytest.approx(12.0)
    assert figures["per_core"] == pytest.approx(6.0)
    assert figures["cpu_ms_per_image"] == pytest.approx(150.0)
    assert figures["busy_cores"] == pytest.approx(1.8)


def test_cpu_delta_counts_what_was_spent_between_two_reads() -> None:
    before = {"worker": 100.0, "api": 40.0}
    after = {"worker": 118.5, "api": 43.0, "redis": 0.5}
    assert cpu_delta(before, after) == pytest.approx({"worker": 18.5, "api": 3.0, "redis": 0.5})
