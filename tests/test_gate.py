"""The worker's gate (pure logic): shared jobs run together, an isolated job runs alone."""

from __future__ import annotations

import asyncio

from imgflow.worker.gate import Gate


async def test_shared_jobs_run_together_and_an_isolated_one_alone() -> None:
    gate = Gate()
    seen: list[tuple[str, int]] = []
    release_first = asyncio.Event()

    async def shared(name: str, wait: asyncio.Event | None = None) -> None:
        async with gate.shared():
            seen.append((name, gate.running))
            if wait is not None:
                await wait.wait()

    async def alone() -> None:
        async with gate.alone():
            seen.append(("alone", gate.running))
            await asyncio.sleep(0.05)

    first = asyncio.create_task(shared("first", release_first))
    second = asyncio.create_task(shared("second", release_first))
    await asyncio.sleep(0.01)
    assert gate.running == 2  # shared jobs run side by side
    isolated = asyncio.create_task(alone())
    await asyncio.sleep(0.01)
    late = asyncio.create_task(shared("late"))  # arrives while the isolated job waits
    await asyncio.sleep(0.01)
    assert ("alone", 1) not in seen and ("late", 1) not in seen  # both wait for the first two
    release_first.set()
    await asyncio.gather(first, second, isolated, late)
    assert seen[2:] == [("alone", 1), ("late", 1)]  # alone, then the late one after it


async def test_a_cancelled_wait_for_the_gate_leaves_it_usable() -> None:
    gate = Gate()
    hold = asyncio.Event()

    async def holder() -> None:
        async with gate.shared():
            await hold.wait()

    task = asyncio.create_task(holder())
    await asyncio.sleep(0.01)
    waiting = asyncio.create_task(gate.alone().__aenter__())
    await asyncio.sleep(0.01)
    waiting.cancel()
    hold.set()
    await task
    async with asyncio.timeout(1), gate.shared():
        assert gate.running == 1
