"""Jobs: create one (an upload, checked, stored, recorded and queued), read one, cancel one, list
a user's, and the presets a job may name."""

from __future__ import annotations

import contextlib
import logging
import re
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from redis.exceptions import RedisError

from imgflow.api import idempotency, metrics, openapi
from imgflow.api.deps import AppState, Principal, Reader, State, Writer
from imgflow.api.multipart import FILE_FIELD, receive_upload
from imgflow.api.openapi import JOB_FORM, JOB_PROPERTIES, MAX_URL, MAX_USER_ID
from imgflow.api.problems import Problem, documented
from imgflow.api.schemas import Accepted, JobList, JobView
from imgflow.api.signed_urls import url_base
from imgflow.api.slots import upload_slot
from imgflow.core import cost, lifecycle, quota, reuse
from imgflow.core.fetch import FetchRefused, check_url
from imgflow.core.jobs import Job, JobStatus, Priority, UploadSource, new_job_id, original_key, utcnow
from imgflow.core.options import InvalidOption, read_outputs
from imgflow.core.outputs import refusal
from imgflow.core.probe import ImageTooLarge, UndecodableImage, UnsupportedImage, probe_file
from imgflow.core.settings import Settings
from imgflow.core.store import InvalidCursor, PageCursor
from imgflow.core.watermarks import unusable_watermark

router = APIRouter(tags=["jobs"])
JOBS = "/api/image-processing/jobs"
USER_ID = re.compile(openapi.USER_ID)

log = logging.getLogger("imgflow.api")


async def _callback_url(url: str | None, settings: Settings) -> str | None:
    """The job's webhook URL, checked like a URL source (scheme, public address) at the door; the
    sender checks the address again when it connects."""
    if url is None:
        return None
    if not settings.webhook_secret:
        raise Problem(
            422,
            "Invalid request",
            "callbackUrl needs webhooks enabled on this service (IMGFLOW_WEBHOOK_SECRET).",
        )
    if len(url) > MAX_URL:
        raise Problem(422, "Invalid request", f"callbackUrl is longer than {MAX_URL} characters.")
    try:
        await check_url(url, settings)
    except FetchRefused as exc:
        raise Problem(422, "URL refused", f"callbackUrl: {exc}") from exc
    return url


@router.post(
    JOBS,
    status_code=202,
    response_model=Accepted,
    operation_id="createJob",
    summary="Submit an image",
    description="Accepts the image and answers at once; a worker makes the thumbnail. "
    "The format is read from the bytes, never from the file name or Content-Type. "
    "With an `Idempotency-Key` header, a retry of the same request (same bytes and fields) "
    "within 24 h answers the first job instead of creating another.",
    openapi_extra=JOB_FORM,
    responses=documented(400, 401, 403, 408, 409, 413, 415, 422, 429, 503),
)
async def create_job(
    request: Request,
    response: Response,
    state: State,
    principal: Writer,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias=idempotency.HEADER,
            description="Any unique string (a UUID) per intended job; retries send the same one. "
            "Another shape: 400",
            json_schema_extra={"pattern": idempotency.PATTERN},
        ),
    ] = None,
) -> Accepted:
    async with upload_slot(state, principal):
        claim = None
        if idempotency_key is not None:
            claim = await idempotency.claim(
                state.redis, state.store, state.settings, principal.tenant, idempotency_key
            )
        try:
            accepted = await _accept(request, state, principal, claim)
        except BaseException:
            if claim is not None and claim.done is None:
                with contextlib.suppress(RedisError):
                    await idempotency.abandon(state.redis, claim)
            raise
    response.headers["Location"] = f"{JOBS}/{accepted.job_id}"
    return accepted


async def _accept(
    request: Request, state: AppState, principal: Principal, claim: idempotency.Claim | None
) -> Accepted:
    """Receive, check, store, record and publish one job (or replay an idempotent one)."""
    settings = state.settings
    print_ = ""
    reusing = reuse.allowed(settings, principal.tenant)
    async with receive_upload(request, settings, digest=claim is not None or reusing) as upload:
        given_user_id = upload.fields.get("userId", "")
        user_id = given_user_id.strip(" ")
        missing = [name for name, ok in ((FILE_FIELD, upload.path), ("userId", user_id)) if not ok]
        if missing:
            raise Problem(422, "Invalid request", f"Missing form field(s): {', '.join(missing)}.")
        if claim is not None:
            print_ = idempotency.fingerprint(upload.sha256 or "", upload.fields)
            if claim.done is not None:
                return Accepted.model_validate(idempotency.replay(claim, print_))
        if len(given_user_id) > MAX_USER_ID or not USER_ID.fullmatch(given_user_id):
            raise Problem(
                422,
                "Invalid request",
                f"userId must be 1 to {MAX_USER_ID} characters, none a control character.",
            )
        blank = [name for name in JOB_PROPERTIES if name in upload.fields and not upload.fields[name].strip()]
        if blank:
            # the form's schema has no empty value for them; an option left out takes its default
            raise Problem(422, "Invalid request", f"{blank[0]} is empty: leave it out for its default.")
        try:
            outputs = read_outputs(
                upload.fields, settings.presets, settings.output_limits, request.headers.get("accept", "")
            )
        except InvalidOption as exc:
            raise Problem(422, "Invalid request", str(exc)) from exc
        no_mark = await unusable_watermark(outputs, principal.tenant, state.watermarks)
        if no_mark:
            raise Problem(422, "Unknown watermark", no_mark)
        callback_url = await _callback_url(upload.fields.get("callbackUrl"), settings)
        priority = upload.fields.get("priority", Priority.interactive.value).strip()
        if priority not in set(Priority):
            raise Problem(422, "Invalid request", "priority must be interactive or batch.")
        try:
            reusing = reuse.asked(upload.fields) and reusing
        except reuse.InvalidReuse as exc:
            raise Problem(
                422, "Invalid request", str(exc), errors=[{"field": reuse.FIELD, "message": str(exc)}]
            ) from exc
        path = upload.path
        assert path is not None
        if upload.size == 0:
            raise Problem(422, "Empty file", "The file is empty: send the image's bytes.")
        try:
            info = await anyio.to_thread.run_sync(
                lambda: probe_file(path, max_pixels=settings.max_pixels, max_side=settings.max_side)
            )
        except UndecodableImage as exc:  # HEIF coded with HEVC, or a damaged HEIF
            metrics.REJECTED.labels("422").inc()
            raise Problem(422, "Image cannot be decoded", str(exc)) from exc
        except UnsupportedImage as exc:
            metrics.REJECTED.labels("415").inc()
            raise Problem(415, "Unsupported image", str(exc)) from exc
        except ImageTooLarge as exc:
            metrics.REJECTED.labels("422").inc()
            raise Problem(422, "Image too large", str(exc)) from exc
        refused = refusal(outputs.specs, info.format, info.displayed, info.pages, settings.output_limits)
        if refused:
            metrics.REJECTED.labels("422").inc()
            raise Problem(422, *refused)
        seen = cost.Source(*info.displayed, info.format, info.pages)
        costly = cost.too_costly(outputs.specs, seen, settings.max_job_cost, principal.limits.max_job_cost)
        if costly:
            metrics.REJECTED.labels("422").inc()
            raise Problem(422, "Job too costly", costly)

        job_id = claim.job_id if claim is not None else new_job_id()
        source = UploadSource(key=original_key(job_id), filename=upload.filename)
        job = Job(
            job_id=job_id,
            user_id=user_id,
            tenant=principal.tenant,
            key_id=principal.key_id,
            spec=outputs.specs[0],
            variants=outputs.specs if outputs.named else [],
            preset=outputs.preset,
            source=source,
            callback_url=callback_url,
            cost=cost.estimate(outputs.specs, seen),
            priority=Priority(priority),
            reuse_key=reuse.key(principal.tenant, upload.sha256, outputs.specs, outputs.named)
            if reusing and upload.sha256
            else None,
            idempotency_print=print_ or None,
        )
        try:
            reused = await _reuse(state, job)
            if reused is not None:
                job = reused
            else:
                await lifecycle.accept(
                    state,
                    job,
                    original=path,
                    media_type=f"image/{info.format}",
                    take_place=not principal.admin,
                    insert_by=claim.insert_by if claim is not None else None,
                )
        except quota.TenantFull as exc:
            metrics.REJECTED.labels("429").inc()
            raise Problem(
                429,
                "Too many unfinished jobs",
                f"Tenant {exc.tenant!r} has {exc.cap} jobs pending or processing, the most it may have "
                "at once; submit more as these finish.",
                headers={"Retry-After": "5"},
            ) from exc
    metrics.SUBMITTED.inc()
    accepted = Accepted(job_id=job.job_id, status=job.status, created_at=job.created_at)
    if claim is not None:
        try:
            await idempotency.remember(state.redis, settings, claim, print_, accepted.model_dump(mode="json"))
        except RedisError:
            # The job is accepted: answer so. An error here would say "nothing was kept" and free
            # the key for a retry that makes the job twice; once the pending mark's deadline has
            # passed, a retry finds this job through it.
            log.warning("job %s accepted, its Idempotency-Key not recorded", job.job_id, exc_info=True)
    return accepted


async def _reuse(state: AppState, job: Job) -> Job | None:
    """``job`` completed from the outputs of an identical finished job of its tenant, if one is
    there (imgflow.core.reuse); else None."""
    if job.reuse_key is None:
        return None
    origin = await state.store.offered(job.reuse_key)
    if origin is None or not origin.reusable(utcnow()):
        return None
    reused = await lifecycle.reuse(state, job, origin)
    if reused is not None:
        metrics.REUSED.inc()
    return reused


@router.get(
    "/api/presets",
    operation_id="listPresets",
    summary="The service's presets",
    description="Named sets of variants a job asks for with the `preset` form field "
    "(configured by the service's operator: IMGFLOW_PRESETS). A format of `auto` is decided from "
    "the Accept header of the request that creates the job.",
    responses=documented(401, 403, 429),
)
async def list_presets(state: State, principal: Reader) -> dict[str, list[dict[str, Any]]]:
    return state.settings.presets


@router.get(
    JOBS + "/{job_id}",
    response_model=JobView,
    response_model_exclude_none=True,
    operation_id="getJob",
    summary="Get one job",
    responses=documented(401, 403, 404, 429, 503),
)
async def get_job(job_id: str, request: Request, state: State, principal: Reader) -> JobView:
    job = await visible_job(state, principal, job_id)
    return JobView.of(job, await state.signer.sign(job, url_base(request, state.settings.url_base)))


@router.delete(
    JOBS + "/{job_id}",
    response_model=JobView,
    response_model_exclude_none=True,
    operation_id="cancelJob",
    summary="Cancel a job",
    description="A pending job is `cancelled` at once (200, the job). A job a worker is making is "
    "stopped at its next step (202, the job as it is now: follow it to see it end `cancelled`; one "
    "already storing its outputs still completes). Either way a cancelled job's outputs are "
    "removed and its webhooks get `job.cancelled`. A finished job: 409.",
    responses={
        202: {
            "description": "Cancellation requested: the job's worker stops at its next step",
            "model": JobView,
        },
        **documented(401, 403, 404, 429, 503),
        409: {**documented(409)[409], "description": "The job is finished: nothing to cancel"},
    },
)
async def cancel_job(job_id: str, response: Response, state: State, principal: Writer) -> JobView:
    job = await visible_job(state, principal, job_id)
    after = None if job.status.finished else await lifecycle.cancel(state, job)
    if after is None:  # finished before, or meanwhile
        job = await state.store.get(job_id) or job
        raise Problem(409, "Job finished", f"The job is {job.status.value}: there is nothing to cancel.")
    if after.status is not JobStatus.cancelled:
        response.status_code = 202
    return JobView.of(after)


async def visible_job(state: AppState, principal: Principal, job_id: str, *, expired: bool = False) -> Job:
    """The job, if it exists, the caller's tenant may see it and it has not expired (or
    ``expired`` allows that: a job waiting for its webhook is kept past its expiry); else 404, the
    same answer for another tenant's job as for none, so ids leak nothing."""
    job = await state.store.view(job_id)
    gone = not expired and job is not None and job.expires_at is not None and job.expires_at <= utcnow()
    if job is None or not principal.sees(job) or gone:
        raise Problem(404, "Job not found", f"There is no job with id {job_id!r} (or it has expired).")
    return job


@router.get(
    "/api/image-processing/users/{user_id}/jobs",
    response_model=JobList,
    response_model_exclude_none=True,
    operation_id="listUserJobs",
    summary="List a user's jobs, newest first",
    responses=documented(400, 401, 403, 422, 429, 503),
    description="Paged by cursor: follow `nextCursor` until it is absent. "
    "A cursor stays correct while new jobs arrive; the original's `page` is still accepted down to "
    "IMGFLOW_LIST_MAX_OFFSET jobs ((page - 1) x limit; deeper: 400, page by cursor instead).",
)
async def list_jobs(
    user_id: str,
    request: Request,
    state: State,
    principal: Reader,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status")] = None,
    limit: Annotated[int, Query(ge=1, le=100, description="Jobs per page")] = 20,
    cursor: Annotated[str | None, Query(description="nextCursor of the previous page")] = None,
    page: Annotated[
        int | None, Query(ge=1, le=1000, deprecated=True, description="1-based page (use cursor)")
    ] = None,
) -> JobList:
    after = None
    if cursor:
        try:
            after = PageCursor.decode(cursor)
        except InvalidCursor:
            raise Problem(400, "Invalid cursor", "The cursor is not one this service handed out.") from None
    # The original's numbered pages: one query that skips the pages before, as deep as the bound
    # (the database reads every skipped job; a cursor costs the same at any depth).
    skip = (page - 1) * limit if page is not None and after is None else 0
    if skip > state.settings.list_max_offset:
        raise Problem(
            400,
            "Page too deep",
            f"page={page} with limit={limit} starts {skip:,} jobs deep; numbered pages reach "
            f"{state.settings.list_max_offset:,} jobs deep at most. Page with the cursor instead: "
            "ask without page and pass each answer's nextCursor as cursor.",
        )
    base = url_base(request, state.settings.url_base)
    result = await state.store.list_for_user(
        user_id, tenant=principal.visible_tenant, status=status, limit=limit, after=after, skip=skip
    )
    return JobList(
        jobs=[JobView.of(job, await state.signer.sign(job, base)) for job in result.jobs],
        next_cursor=result.next_cursor.encode() if result.next_cursor else None,
    )
