"""A tenant's watermarks: ``POST /api/watermarks`` (a PNG, once), ``GET /api/watermarks``,
``DELETE /api/watermarks/{id}``. A job's options name one by id (imgflow.core.watermarks)."""

from __future__ import annotations

import logging
import re
from typing import Annotated

import anyio
from fastapi import APIRouter, Path, Request, Response
from pydantic import Field

from imgflow.api.deps import Reader, State, Writer
from imgflow.api.multipart import FILE_FIELD, receive_upload
from imgflow.api.openapi import MAX_WATERMARK_NAME, PRINTABLE, WATERMARK_FORM
from imgflow.api.problems import Problem, documented
from imgflow.api.schemas import Camel, Timestamp
from imgflow.api.slots import upload_slot
from imgflow.core.outputs import WATERMARK_ID
from imgflow.core.probe import ImageTooLarge, UnsupportedImage, probe_file
from imgflow.core.watermarks import MAX_BYTES, MAX_PER_TENANT, MAX_SIDE, Watermark

router = APIRouter(prefix="/api/watermarks", tags=["watermarks"])
log = logging.getLogger("imgflow.api")


class WatermarkView(Camel):
    id: str = Field(description="What a job's watermark option names")
    name: str | None = None
    width: int
    height: int
    bytes: int
    created_at: Timestamp

    @classmethod
    def of(cls, mark: Watermark) -> WatermarkView:
        return cls(
            id=mark.watermark_id,
            name=mark.name,
            width=mark.width,
            height=mark.height,
            bytes=mark.bytes,
            created_at=mark.created_at,
        )


class WatermarkList(Camel):
    watermarks: list[WatermarkView]


@router.post(
    "",
    status_code=201,
    response_model=WatermarkView,
    response_model_exclude_none=True,
    operation_id="createWatermark",
    summary="Upload a watermark (PNG) for the tenant's jobs",
    description="Jobs name it with the `watermark` option (per variant too), placed with "
    "`watermarkPosition` (a compass point, default south-east), `watermarkMargin` (output pixels, "
    "default 16), `watermarkOpacity` (0.05-1, default 1) and `watermarkScale` (its width as a "
    "fraction of the output's, default 0.25).",
    openapi_extra=WATERMARK_FORM,
    responses=documented(400, 401, 403, 408, 409, 413, 415, 422, 429, 503),
)
async def create_watermark(
    request: Request, state: State, principal: Writer, response: Response
) -> WatermarkView:
    async with (
        upload_slot(state, principal),
        receive_upload(request, state.settings, max_bytes=MAX_BYTES) as upload,
    ):
        if upload.path is None or upload.size == 0:
            raise Problem(422, "Invalid request", f"Send the PNG in a {FILE_FIELD!r} part.")
        path = upload.path
        try:
            info = await anyio.to_thread.run_sync(
                lambda: probe_file(path, max_pixels=MAX_SIDE * MAX_SIDE, max_side=MAX_SIDE)
            )
        except UnsupportedImage as exc:
            raise Problem(415, "Unsupported image", str(exc)) from exc
        except ImageTooLarge as exc:
            raise Problem(422, "Watermark too large", str(exc)) from exc
        if info.format != "png":
            raise Problem(
                415, "Unsupported image", f"A watermark is a PNG (for its transparency), not {info.format}."
            )
        given_name = upload.fields.get("name", "")
        if len(given_name) > MAX_WATERMARK_NAME or not re.fullmatch(PRINTABLE, given_name):
            raise Problem(
                422,
                "Invalid request",
                f"name must be at most {MAX_WATERMARK_NAME} characters, none a control character.",
            )
        name = given_name.strip() or None
        if len(await state.watermarks.of_tenant(principal.tenant, limit=MAX_PER_TENANT)) >= MAX_PER_TENANT:
            raise _at_cap()  # first: a tenant at its cap stores nothing
        mark = Watermark(
            tenant=principal.tenant, name=name, width=info.width, height=info.height, bytes=upload.size
        )
        await state.storage.save(mark.key, path, "image/png")
    if not await state.watermarks.register(mark, MAX_PER_TENANT):  # the cap, checked atomically
        await state.storage.delete(mark.key)
        raise _at_cap()
    log.info("stored watermark %s of tenant %s", mark.watermark_id, mark.tenant)
    response.headers["Location"] = f"/api/watermarks/{mark.watermark_id}"
    return WatermarkView.of(mark)


def _at_cap() -> Problem:
    return Problem(
        409, "Too many watermarks", f"A tenant may keep {MAX_PER_TENANT} watermarks; delete one first."
    )


@router.get(
    "",
    response_model=WatermarkList,
    response_model_exclude_none=True,
    operation_id="listWatermarks",
    summary="The tenant's watermarks",
    responses=documented(401, 403, 429, 503),
)
async def list_watermarks(state: State, principal: Reader) -> WatermarkList:
    found = await state.watermarks.of_tenant(principal.visible_tenant)
    return WatermarkList(watermarks=[WatermarkView.of(mark) for mark in found])


@router.delete(
    "/{watermark_id}",
    status_code=204,
    operation_id="deleteWatermark",
    summary="Delete a watermark (jobs accepted with it and not yet made fail)",
    responses=documented(401, 403, 404, 429, 503),
)
async def delete_watermark(
    watermark_id: Annotated[str, Path(pattern=WATERMARK_ID)], state: State, principal: Writer
) -> Response:
    mark = await state.watermarks.get(watermark_id)
    if mark is None or not principal.sees(mark):
        raise Problem(404, "Not found", f"There is no watermark {watermark_id!r}.")
    await state.watermarks.remove(mark)
    await state.storage.delete(mark.key)
    log.info("deleted watermark %s of tenant %s", watermark_id, mark.tenant)
    return Response(status_code=204)
