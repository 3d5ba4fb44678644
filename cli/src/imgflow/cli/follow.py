"""Following a job until it is finished: its Server-Sent Events stream (one ``status`` event per
change), or, when the stream cannot be had or ends early, polling ``GET .../jobs/{id}``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from imgflow.cli.client import JOBS, Api, ApiError, Unreachable, segment

# "cancelled" is what servers with cancellation answer; older ones never do
FINISHED = frozenset({"completed", "failed", "cancelled"})
POLL_FIRST_S = 0.25
POLL_MOST_S = 2.0

Job = dict[str, Any]
OnChange = Callable[[Job], None]


@dataclass
class Event:
    event: str
    data: str
    id: str | None


async def events(response: httpx.Response) -> AsyncIterator[Event]:
    """The events of a ``text/event-stream`` body (the WHATWG format: ``field: value`` lines, an
    empty line ends an event, ``:`` starts a comment)."""
    name, event_id = "message", None
    data: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield Event(name, "\n".join(data), event_id)
            name, data = "message", []
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id":
            event_id = value


async def follow(
    api: Api, job_id: str, on_change: OnChange | None = None, note: Callable[[str], None] | None = None
) -> Job:
    """The job once finished; ``on_change`` hears each state it is seen in, ``note`` why the job
    is polled rather than streamed. A job that does not exist (or has expired) raises ApiError."""
    why = "its event stream ended early"
    try:
        job = await _stream(api, job_id, on_change)
    except ApiError as exc:
        if exc.status == 404:
            raise
        job, why = None, f"no event stream ({exc})"  # 429: this key's streams are all open
    except Unreachable as exc:
        job, why = None, f"event stream cut ({exc})"
    if job is not None and job.get("status") in FINISHED:
        return job
    if note is not None:
        note(f"polling job {job_id}: {why}")
    return await poll(api, job_id, on_change)


async def _stream(api: Api, job_id: str, on_change: OnChange | None) -> Job | None:
    job: Job | None = None
    headers = {"Accept": "text/event-stream"}
    async with api.stream("GET", f"{JOBS}/{segment(job_id)}/events", headers=headers) as response:
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            return None
        async for event in events(response):
            if event.event != "status":
                continue
            job = json.loads(event.data)
            assert job is not None
            if on_change is not None:
                on_change(job)
            if job.get("status") in FINISHED:
                break
    return job


async def poll(api: Api, job_id: str, on_change: OnChange | None = None) -> Job:
    pause = POLL_FIRST_S
    last = None
    while True:
        job: Job = await api.json("GET", f"{JOBS}/{segment(job_id)}")
        if on_change is not None and job.get("status") != last:
            on_change(job)
        last = job.get("status")
        if last in FINISHED:
            return job
        await asyncio.sleep(pause)
        pause = min(pause * 2, POLL_MOST_S)
