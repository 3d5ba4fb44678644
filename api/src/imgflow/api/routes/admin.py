"""Operator endpoints: the dead letters (jobs that failed after their last retry). Admin scope."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from imgflow.api.deps import AdminKey, State
from imgflow.api.problems import Problem, documented
from imgflow.api.schemas import Camel, JobView
from imgflow.core import lifecycle
from imgflow.core.jobs import JobStatus
from imgflow.core.retries import dead_letters

router = APIRouter(prefix="/api/admin", tags=["admin"])


class DeadLetterView(Camel):
    entry_id: str
    job_id: str
    error: str


class DeadLetterList(Camel):
    dead_letters: list[DeadLetterView]
    next_after: str | None = None


@router.get(
    "/dead-letters",
    response_model=DeadLetterList,
    operation_id="listDeadLetters",
    summary="Jobs that failed after their last retry",
    responses=documented(401, 403, 422),
)
async def list_dead_letters(
    state: State,
    _: AdminKey,
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
    operation_id="retryDeadLetter",
    summary="Send a dead-lettered job back to the queue, its retries reset",
    responses=documented(401, 403, 404),
)
async def retry_dead_letter(job_id: str, state: State, _: AdminKey, response: Response) -> JobView:
    job = await state.store.get(job_id)
    if job is None or job.status is not JobStatus.failed:
        raise Problem(404, "Not found", f"No failed job {job_id!r}.")
    revived = await lifecycle.revive(state, job)
    if revived is None:
        raise Problem(404, "Not found", f"Job {job_id!r} is not among the dead letters.")
    response.headers["Location"] = f"/api/image-processing/jobs/{job_id}"
    return JobView.of(revived)
