"""The worker's memory estimate and budget, as pure logic (tests/test_memory_bound.py runs a real
worker inside a memory cgroup of the chart's size)."""

from __future__ import annotations

import anyio
import pytest

from imgflow.core.outputs import ThumbnailSpec
from imgflow.core.probe import ImageInfo
from imgflow.worker.memory import MB, MemoryBudget, OverBudget, job_memory_bytes

SPEC = ThumbnailSpec(width=400, height=300)


def png(width: int, height: int, *, interlaced: bool = False) -> ImageInfo:
    return ImageInfo("png", width, height, 1, bands=4, sample_bytes=2, interlaced=interlaced)


def test_a_streamed_source_costs_its_width_not_its_area() -> None:
    wide, tall = png(16384, 3051), png(3051, 16384)
    assert job_memory_bytes(wide, [SPEC], 0, quality=85) > 3 * job_memory_bytes(tall, [SPEC], 0, quality=85)


def test_an_interlaced_source_costs_its_area() -> None:
    plain, interlaced = png(7071, 7071), png(7071, 7071, interlaced=True)
    assert job_memory_bytes(interlaced, [SPEC], 0, quality=85) > 7071 * 7071 * 8
    assert (
        job_memory_bytes(plain, [SPEC], 0, quality=85)
        < job_memory_bytes(interlaced, [SPEC], 0, quality=85) / 2
    )


def test_jpeg_shrink_on_load_is_counted_but_not_for_progressive() -> None:
    baseline = ImageInfo("jpeg", 8000, 6000, 1)
    progressive = ImageInfo("jpeg", 8000, 6000, 1, interlaced=True)
    assert job_memory_bytes(baseline, [SPEC], 0, quality=85) < 64 * MB
    assert job_memory_bytes(progressive, [SPEC], 0, quality=85) > 8000 * 6000 * 3 * 2


def test_the_source_bytes_count() -> None:
    info = png(1000, 1000)
    assert (
        job_memory_bytes(info, [SPEC], 10 * MB, quality=85) - job_memory_bytes(info, [SPEC], 0, quality=85)
        == 10 * MB
    )


async def test_more_than_the_whole_budget_is_refused_with_the_figures() -> None:
    budget = MemoryBudget(100 * MB)
    with pytest.raises(OverBudget, match=r"about 101 MB, over the 100 MB"):
        async with budget.hold(101 * MB):
            pass


async def test_jobs_that_do_not_fit_together_run_one_after_the_other() -> None:
    budget = MemoryBudget(100 * MB)
    running: list[str] = []
    overlaps: list[list[str]] = []

    async def job(name: str, amount: int) -> None:
        async with budget.hold(amount):
            running.append(name)
            overlaps.append(list(running))
            await anyio.sleep(0.05)
            running.remove(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(job, "big-1", 60 * MB)
        await anyio.sleep(0.01)
        tg.start_soon(job, "big-2", 60 * MB)
        await anyio.sleep(0.01)
        tg.start_soon(job, "small", 10 * MB)  # fits beside big-1, but waits its turn behind big-2
    assert overlaps == [["big-1"], ["big-2"], ["big-2", "small"]]
    assert budget.held == 0


async def test_a_cancelled_waiter_gives_up_its_turn() -> None:
    budget = MemoryBudget(100 * MB)
    order: list[str] = []

    async def job(name: str, amount: int) -> None:
        async with budget.hold(amount):
            order.append(name)
            await anyio.sleep(0.05)

    async with anyio.create_task_group() as tg:
        tg.start_soon(job, "first", 90 * MB)
        await anyio.sleep(0.01)
        with anyio.move_on_after(0.01):
            await job("cancelled", 90 * MB)
        tg.start_soon(job, "next", 90 * MB)
    assert order == ["first", "next"]
    assert budget.held == 0
