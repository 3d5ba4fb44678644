"""Live progress: a job's status changes as Server-Sent Events, instead of polling.

``GET /api/image-processing/jobs/{jobId}/events`` answers ``text/event-stream``: first the job as
it is now, then one ``status`` event (the job view, id = the change's id) per change, and the
stream ends once the job is finished. A comment line every few seconds keeps proxies from closing
an idle stream. ``Last-Event-ID`` resumes after a dropped connection, on any API replica (the
changes come from Redis: imgflow.core.events).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse

from imgflow.api.auth import Reader
from imgflow.api.problems import documented
from imgflow.api.routes import visible_job
from imgflow.api.schemas import JobView
from imgflow.api.state import State
from imgflow.core.events import last_change, next_changes
from imgflow.core.jobs import Job, JobStatus

router = APIRouter(tags=["jobs"])
# under the API's Redis socket timeout (5 s), so a blocking read never trips it
HEARTBEAT_MS = 4000
ENTRY_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
FINISHED = (JobStatus.completed, JobStatus.failed)


def _event(job: Job, event_id: str) -> str:
    data = JobView.of(job).model_dump_json(by_alias=True, exclude_none=True)
    return f"id: {event_id}\nevent: status\ndata: {data}\n\n"


@router.get(
    "/api/image-processing/jobs/{job_id}/events",
    summary="Follow a job's status (Server-Sent Events)",
    description="One `status` event (the job view) now and on every change; the stream ends when "
    "the job is finished. Send `Last-Event-ID` to resume.",
    operation_id="followJob",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **documented(401, 403, 404, 429, 503)},
)
async def job_events(
    job_id: str,
    request: Request,
    state: State,
    principal: Reader,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    redis, settings = state.redis, state.settings
    resume = last_event_id if last_event_id and ENTRY_ID.match(last_event_id) else None
    # the latest change before reading the job: nothing that happens after the read is missed
    latest = await last_change(redis, settings, job_id)
    after = resume or latest
    job = await visible_job(state, principal, job_id)

    async def stream() -> AsyncIterator[str]:
        nonlocal after
        current: Job | None = job
        if resume is None or (current is not None and current.status in FINISHED):
            assert current is not None
            yield _event(current, latest)
        while current is not None and current.status not in FINISHED:
            if await request.is_disconnected():
                return
            changes = await next_changes(redis, settings, job_id, after, HEARTBEAT_MS)
            if not changes:
                yield ": keep-alive\n\n"
                continue
            after = changes[-1]
            current = await state.store.view(job_id)
            if current is not None:
                yield _event(current, after)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
