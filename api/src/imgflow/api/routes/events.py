"""Live progress: a job's status changes as Server-Sent Events, instead of polling.

``GET /api/image-processing/jobs/{jobId}/events`` answers ``text/event-stream``: first the job as
it is now, then one ``status`` event (the job view, id = the change's id) per change, and the
stream ends once the job is finished. A comment line every few seconds keeps proxies from closing
an idle stream. ``Last-Event-ID`` resumes after a dropped connection, on any API replica (the
changes come from Redis: imgflow.core.events); one Redis cannot read is a 400.

A stream holds no Redis connection (the process's ChangeFeed reads for all of them), but it holds
an HTTP connection and a place in memory: an API process serves ``max_streams`` at once, and
``max_streams_per_key`` per key; more get 429. A stream ends within HEARTBEAT_S + key_cache_s of
its key being revoked, and within HEARTBEAT_S of its process being told to stop (SIGTERM), so that
its client resumes on another replica.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse
from pymongo.errors import PyMongoError

from imgflow.api import stopping
from imgflow.api.deps import BOOTSTRAP_KEY_ID, AppState, Principal, Reader, State
from imgflow.api.problems import Problem, documented
from imgflow.api.routes.jobs import visible_job
from imgflow.api.schemas import JobView
from imgflow.api.signed_urls import Signed, url_base
from imgflow.core.events import entry_order, last_change
from imgflow.core.jobs import Job

router = APIRouter(tags=["jobs"])
HEARTBEAT_S = 4.0  # also how often a stream makes sure its key still exists


def _at_most(limit: int) -> str:
    """A regular expression of the decimal numbers 0 to ``limit``, leading zeros allowed."""
    top = str(limit)
    shorter = [f"[0-9]{{1,{len(top) - 1}}}"] if len(top) > 1 else []
    below = [
        f"{top[:i]}[0-{int(digit) - 1}][0-9]{{{len(top) - i - 1}}}"
        for i, digit in enumerate(top)
        if digit != "0"
    ]
    return f"(?:{'|'.join([*shorter, *below, top])})"


# what entry_order takes: <ms>[-<seq>], each a Redis stream id's 64-bit part; empty: from now
EVENT_ID = f"^(?:{_at_most(2**64 - 1)}(?:-{_at_most(2**64 - 1)})?)?$"


def _event(job: Job, event_id: str, signed: Signed | None) -> str:
    data = JobView.of(job, signed).model_dump_json(by_alias=True, exclude_none=True)
    return f"id: {event_id}\nevent: status\ndata: {data}\n\n"


async def _key_revoked(state: AppState, principal: Principal) -> bool:
    if principal.key_id in (None, BOOTSTRAP_KEY_ID):  # auth off, or the settings' own key
        return False
    try:
        return await state.key_cache.get(principal.key_id) is None
    except PyMongoError:  # MongoDB down is not a revocation: the stream goes on
        return False


@router.get(
    "/api/image-processing/jobs/{job_id}/events",
    summary="Follow a job's status (Server-Sent Events)",
    description="One `status` event (the job view) now and on every change; the stream ends when "
    "the job is finished or the key is revoked. Send `Last-Event-ID` to resume.",
    operation_id="followJob",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}, **documented(400, 401, 403, 404, 429, 503)},
)
async def job_events(
    job_id: str,
    request: Request,
    state: State,
    principal: Reader,
    last_event_id: Annotated[
        str | None,
        Header(
            description="The id of the last event received: the stream resumes after it. "
            "One this API could not have sent: 400",
            json_schema_extra={"pattern": EVENT_ID},
        ),
    ] = None,
) -> StreamingResponse:
    resume = last_event_id or None
    if resume is not None and entry_order(resume) is None:
        raise Problem(
            400,
            "Malformed request",
            f"Last-Event-ID {resume[:60]!r} is not an event id this API sent (<ms>-<seq>, each below 2^64).",
        )
    refused = state.streams.refusal(principal.key_id)
    if refused is not None:
        raise refused
    # the latest change before reading the job: nothing that happens after the read is missed
    latest = await last_change(state.redis, state.settings, job_id)
    job = await visible_job(state, principal, job_id)
    loop = asyncio.get_running_loop()
    base = url_base(request, state.settings.url_base)

    async def stream() -> AsyncIterator[str]:
        # Counted from here, where leaving is certain to uncount it: requests racing past the check
        # above end here at once when no place is left (a reconnecting client then gets the 429).
        with state.streams.hold(principal.key_id) as held:
            if not held:
                return
            current: Job | None = job
            if resume is None or (current is not None and current.status.finished):
                assert current is not None
                yield _event(current, latest, await state.signer.sign(current, base))
            key_checked = loop.time()
            with state.feed.follow(job_id, resume or latest) as follower:
                while current is not None and not current.status.finished:
                    # this process stopping: the client resumes on another replica (Last-Event-ID)
                    if stopping.requested() or await request.is_disconnected():
                        return
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(HEARTBEAT_S):
                            await follower.changed.wait()
                    if loop.time() - key_checked >= HEARTBEAT_S:
                        key_checked = loop.time()
                        if await _key_revoked(state, principal):
                            return
                    if not follower.changed.is_set():
                        yield ": keep-alive\n\n"
                        continue
                    follower.changed.clear()
                    current = await state.store.view(job_id)
                    if current is not None:
                        yield _event(current, follower.after, await state.signer.sign(current, base))

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
