"""Operations the stack sends to MongoDB and Redis, counted around a run: MongoDB commands from the
API's and the worker's ``imgflow_mongodb_commands_total`` (every process counts its own), Redis
commands from the server's ``INFO commandstats`` (all clients: API, worker, SSE followers)."""

from __future__ import annotations

import re
from collections import Counter

import httpx
from redis.asyncio import Redis

_SAMPLE = re.compile(r'^imgflow_mongodb_commands_total\{command="([^"]+)"\} ([0-9.e+]+)$', re.M)


async def mongo_commands(metrics_urls: list[str]) -> Counter[str]:
    total: Counter[str] = Counter()
    async with httpx.AsyncClient(timeout=10) as client:
        for url in metrics_urls:
            text = (await client.get(url)).text
            for name, value in _SAMPLE.findall(text):
                total[name] += int(float(value))
    return total


async def redis_commands(redis_url: str) -> Counter[str]:
    redis = Redis.from_url(redis_url)
    try:
        stats = await redis.info("commandstats")
    finally:
        await redis.aclose()
    return Counter({name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()})


def per_job(before: Counter[str], after: Counter[str], jobs: int) -> dict[str, float]:
    """Commands per job by name, most first (names that did not change left out)."""
    delta = after - before
    return {name: count / jobs for name, count in delta.most_common()}


def describe(counts: dict[str, float], top: int = 8) -> str:
    shown = ", ".join(f"{name} {n:.2f}" for name, n in list(counts.items())[:top])
    rest = sum(list(counts.values())[top:])
    return f"{sum(counts.values()):.1f} ({shown}{f', others {rest:.2f}' if rest else ''})"
