"""A thumbnail's bytes, to a caller whose tenant may see its job: streamed from storage, or a
redirect to a presigned URL when the storage can make one (IMGFLOW_S3_PRESIGN)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from imgflow.api.deps import AppState, Principal, Reader, State
from imgflow.api.downloads import send_stored
from imgflow.api.problems import Problem, documented
from imgflow.api.routes.jobs import visible_job
from imgflow.api.schemas import UPLOADS_PREFIX
from imgflow.api.slots import counted
from imgflow.core.jobs import OUTPUT_NAME, utcnow
from imgflow.core.outputs import OutputFormat
from imgflow.core.settings import AuthMode
from imgflow.core.storage import NotFound

router = APIRouter(tags=["jobs"])
THUMBNAIL_TYPES = [f.media_type for f in OutputFormat]


@router.get(
    UPLOADS_PREFIX + "/{name}",
    operation_id="getThumbnail",
    summary="A thumbnail's bytes",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The thumbnail",
            "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in THUMBNAIL_TYPES},
        },
        304: {"description": "Not modified (If-None-Match)"},
        307: {"description": "With IMGFLOW_S3_PRESIGN: the thumbnail is at the presigned S3 URL in Location"},
        **documented(401, 403, 404, 429, 503),
    },
)
async def get_thumbnail(name: str, request: Request, state: State, principal: Reader) -> Response:
    match = OUTPUT_NAME.match(name)
    if not match:
        raise Problem(404, "Not found", f"There is no file {name!r}.")
    if state.settings.auth is not AuthMode.off and not await _served(state, principal, match.group(1)):
        # another tenant's job's file is as missing as none
        raise Problem(404, "Not found", f"There is no file {name!r}.")
    try:
        stored = await state.storage.stat(name)
        if (url := await state.storage.presigned_url(name)) is not None:
            # The bytes go from storage to the client; the API only decided who may have them.
            # The URL expires, so the redirect must not be cached beyond it.
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
        # with keys, a shared cache must not hand one tenant's thumbnail to another
        headers = {
            "Cache-Control": "public, max-age=86400"
            if state.settings.auth is AuthMode.off
            else "private, max-age=86400"
        }
        return await send_stored(
            request, state.storage, stored, headers, state.settings, state.downloads, counted(principal)
        )
    except NotFound:
        raise Problem(404, "Not found", f"There is no file {name!r}.") from None


async def _served(state: AppState, principal: Principal, job_id: str) -> bool:
    """Whether the caller's tenant sees the job that made the file, and its files are kept: until
    it expires, or while a job that reused them has not (its snapshot may be older than that
    reuse: then MongoDB decides)."""
    try:
        job = await visible_job(state, principal, job_id, expired=True)
    except Problem:
        return False
    if not job.files_kept(utcnow()):
        job = await state.store.get(job_id) or job
    return job.files_kept(utcnow())
