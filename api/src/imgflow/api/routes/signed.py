"""Signed delivery URLs (imgflow.api.signed_urls): an output's bytes to anyone holding its unexpired
signed URL, no key needed; a job's URLs signed again (``GET .../urls?ttl=``); a tenant revoking all
its URLs at once."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import Field

from imgflow.api.deps import Reader, State, Writer
from imgflow.api.downloads import send_stored
from imgflow.api.problems import Problem, documented
from imgflow.api.routes.jobs import JOBS, visible_job
from imgflow.api.routes.thumbnails import THUMBNAIL_TYPES
from imgflow.api.schemas import Camel, Timestamp
from imgflow.api.signed_urls import SIGNED_PREFIX, cache_control, output_path, url_base
from imgflow.core.jobs import JobStatus, utcnow
from imgflow.core.settings import MAX_URL_TTL_S
from imgflow.core.storage import NotFound

router = APIRouter(tags=["signed URLs"])


class SignedUrls(Camel):
    job_id: str
    expires_at: Timestamp = Field(description="When these URLs stop working (403 from then on)")
    signed_url: str = Field(description="The thumbnail's (with variants: the first's) signed URL")
    variants: dict[str, str] | None = Field(
        None, description="Each variant's signed URL by name (present when the job asked for variants)"
    )


class Rotated(Camel):
    rotated_at: Timestamp = Field(description="Signed URLs of this tenant issued before this no longer work")


def _refused(detail: str) -> Problem:
    return Problem(403, "Invalid signed URL", detail)


@router.get(
    SIGNED_PREFIX + "/{tenant}/{job_id}/{name}",
    operation_id="getSignedOutput",
    summary="An output's bytes, by its signed URL (no API key)",
    description="What a job's `signedUrl` points to: a browser's `<img src>` fetches it without a key "
    "until `expires`. Cacheable by browsers and CDNs up to then (`public`, `immutable`, ETag). A "
    "signature that does not match (tampered, made for another tenant or file, or revoked by the "
    "tenant rotating its URL secret) or an expired one: 403; a job or file that is gone: 404.",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The output",
            "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in THUMBNAIL_TYPES},
        },
        304: {"description": "Not modified (If-None-Match)"},
        **documented(403, 404, 422, 429, 503),
    },
)
async def get_signed_output(
    tenant: str,
    job_id: str,
    name: str,
    request: Request,
    state: State,
    expires: Annotated[int, Query(ge=0, description="Unix time the URL expires at")],
    signature: Annotated[str, Query(max_length=64, description="The URL's HMAC-SHA256, base64url")],
) -> Response:
    signer, address = state.signer, request.client.host if request.client else ""
    path = output_path(tenant, job_id, name)
    if not state.auth_throttle.may_look_up(address, f"url:{tenant}"):
        raise _throttled(state.auth_throttle.retry_after(address))
    if not signer.enabled or not await signer.verify(tenant, path, expires, signature):
        # a made-up URL counts as a failed authentication of its address
        if wait := state.auth_throttle.failed(address):
            raise _throttled(wait)
        raise _refused("The signature does not match this URL (tampered, or revoked by its tenant).")
    state.auth_throttle.succeeded(f"url:{tenant}")
    now = time.time()
    if expires <= now:
        raise _refused("This signed URL has expired; ask for a new one (GET .../jobs/{jobId}/urls).")
    job = await state.store.view(job_id)
    gone = Problem(404, "Not found", f"There is no file {name!r} (or its job has expired).")
    if job is None or job.tenant != tenant or job.result is None or name not in job.result.keys:
        raise gone
    if job.expires_at is not None and job.expires_at <= utcnow():
        raise gone
    try:
        stored = await state.storage.stat(name)
        headers = {
            "Cache-Control": cache_control(expires, now),
            # pages of any origin may embed it, even those isolating themselves (COEP)
            "Cross-Origin-Resource-Policy": "cross-origin",
        }
        # the downloads' places and deadline as for /uploads; the share is the client address's
        return await send_stored(
            request, state.storage, stored, headers, state.settings, state.downloads, f"ip:{address}"
        )
    except NotFound:
        raise gone from None


def _throttled(wait: float) -> Problem:
    seconds = max(1, round(wait + 0.5))
    return Problem(
        429,
        "Too many invalid signed URLs",
        f"This address sent too many URLs whose signature did not match; retry in {seconds} s.",
        headers={"Retry-After": str(seconds)},
    )


@router.get(
    JOBS + "/{job_id}/urls",
    response_model=SignedUrls,
    response_model_exclude_none=True,
    operation_id="signJobUrls",
    summary="Signed URLs of a completed job's outputs",
    description="URLs a browser fetches without a key (`<img src>`), valid `ttl` seconds (default: "
    "the tenant's, IMGFLOW_URL_TTL_S), never beyond the job's expiresAt. The job view carries "
    "the same as `signedUrl` with the default lifetime. A job not completed: 409.",
    responses={
        **documented(401, 403, 404, 422, 429, 503),
        409: {**documented(409)[409], "description": "The job is not completed: it has no outputs yet"},
    },
)
async def sign_job_urls(
    job_id: str,
    request: Request,
    state: State,
    principal: Reader,
    ttl: Annotated[
        int | None, Query(ge=1, le=MAX_URL_TTL_S, description="Seconds the URLs are valid (at most 7 days)")
    ] = None,
) -> SignedUrls:
    job = await visible_job(state, principal, job_id)
    if not state.signer.enabled:
        raise Problem(
            404, "Signed URLs off", "This service signs no URLs (IMGFLOW_URL_SIGNING_KEY is unset)."
        )
    signed = await state.signer.sign(job, url_base(request, state.settings.url_base), ttl)
    if job.status is not JobStatus.completed or job.result is None or signed is None:
        raise Problem(409, "Job not completed", f"The job is {job.status.value}: it has no outputs to sign.")
    return SignedUrls(
        job_id=job.job_id,
        expires_at=signed.expires_at,
        signed_url=signed.urls[job.result.key],
        variants={v.name: signed.urls[v.key] for v in job.result.variants} or None,
    )


@router.post(
    "/api/signed-urls/rotate",
    response_model=Rotated,
    operation_id="rotateUrlSecret",
    summary="Revoke every signed URL of the tenant",
    description="Gives the tenant a new URL secret: every signed URL issued to it before stops "
    "working (403) on every API replica within IMGFLOW_KEY_CACHE_S. Revoking an API key does not "
    "revoke the URLs it was given; this does. Presigned S3 URLs (s3 storage with "
    "IMGFLOW_S3_PRESIGN) are S3's to check and live until their expiry.",
    responses=documented(401, 403, 429, 503),
)
async def rotate_url_secret(state: State, principal: Writer) -> Rotated:
    return Rotated(rotated_at=await state.signer.rotate(principal.tenant))
