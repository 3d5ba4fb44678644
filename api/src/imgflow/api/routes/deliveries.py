"""A job's webhook deliveries: every attempt to send its job.completed / failed / cancelled event, to its
callbackUrl and to each of the tenant's endpoints (imgflow.api.background.webhook_sender)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field

from imgflow.api.deps import Reader, State
from imgflow.api.problems import documented
from imgflow.api.routes.jobs import visible_job
from imgflow.api.schemas import Camel
from imgflow.core.webhooks import attempts

router = APIRouter(tags=["jobs"])


class DeliveryView(Camel):
    at: str
    attempt: int
    status: int | None
    error: str | None
    delivered: bool
    target: str = Field(description="'callbackUrl', or the id of the tenant's endpoint (POST /api/webhooks)")


class DeliveryList(Camel):
    deliveries: list[DeliveryView]


@router.get(
    "/api/image-processing/jobs/{job_id}/deliveries",
    response_model=DeliveryList,
    operation_id="listJobDeliveries",
    summary="Attempts to deliver the job's webhook",
    responses=documented(401, 403, 404, 429, 503),
)
async def job_deliveries(job_id: str, state: State, principal: Reader) -> DeliveryList:
    await visible_job(state, principal, job_id, expired=True)
    found: list[Any] = await attempts(state.redis, state.settings, job_id)
    return DeliveryList(deliveries=[DeliveryView(**vars(a)) for a in found])
