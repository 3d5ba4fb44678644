"""Operator endpoints: the dead letters (jobs that failed after their last retry).

Guarded by one bearer token, ``IMGFLOW_ADMIN_TOKEN``, compared in constant time; without it they
are disabled (403). A stand-in until API keys with an ``admin`` scope exist: keep these routes
off the public ingress, or behind its authentication.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from imgflow.api.problems import Problem
from imgflow.api.schemas import Camel, JobView
from imgflow.api.state import State
from imgflow.core.events import job_changed
from imgflow.core.jobs import JobStatus
from imgflow.core.queue import dead_letters, publish_job, remove_dead_letters

router = APIRouter(prefix="/api/admin", tags=["admin"])


def require_admin(request: Request, state: State) -> None:
    token = state.settings.admin_token
    if not token:
        raise Problem(403, "Admin endpoints disabled", "Set IMGFLOW_ADMIN_TOKEN to use /api/admin.")
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), token.encode()):
        raise Problem(
            401,
            "Unauthorized",
            "Send the admin token as 'Authorization: Bearer <IMGFLOW_ADMIN_TOKEN>'.",
            headers={"WWW-Authenticate": 'Bearer realm="imgflow-admin"'},
        )


Admin = Annotated[None, Depends(require_admin)]


class DeadLetterView(Camel):
    entry_id: str
    job_id: str
    error: str


class DeadLetterList(Camel):
    dead_letters: list[DeadLetterView]
    next_after: str | None = None


@router.get("/dead-letters", response_model=DeadLetterList, summary="Jobs that failed after their last retry")
async def list_dead_letters(
    state: State,
    _: Admin,
    after: Annotated[str | None, Query(max_length=40, pattern=r"^\d+-\d+$")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> DeadLetterList:
    letters = await dead_letters(state.redis, state.settings, after=after, limit=limit)
    views = [DeadLetterView(entry_id=d.entry_id, job_id=d.job_id, error=d.error) for d in letters]
    return DeadLetterList(
        dead_letters=views, next_after=letters[-1].entry_id if len(letters) == limit else None
    )


@router.post(
    "/dead-letters/{job_id}/retry",
    status_code=202,
    response_model=JobView,
    summary="Send a dead-lettered job back to the queue, its retries reset",
)
async def retry_dead_letter(job_id: str, state: State, _: Admin, response: Response) -> JobView:
    job = await state.store.get(job_id)
    if job is None or job.status is not JobStatus.failed:
        raise Problem(404, "Not found", f"No failed job {job_id!r}.")
    if not await remove_dead_letters(state.redis, state.settings, job_id):
        raise Problem(404, "Not found", f"Job {job_id!r} is not among the dead letters.")
    revived = await state.store.revive(job_id)
    assert revived is not None
    await publish_job(state.broker, state.redis, state.settings, job_id)
    await job_changed(state.redis, state.settings, job_id, JobStatus.pending)
    response.headers["Location"] = f"/api/image-processing/jobs/{job_id}"
    return JobView.of(revived)
