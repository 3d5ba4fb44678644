"""Operations: liveness, readiness (MongoDB, Redis and the storage answer) and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from imgflow.api import metrics
from imgflow.api.deps import State

router = APIRouter(tags=["operations"])
log = logging.getLogger("imgflow.api")


@router.get("/healthz", operation_id="healthz", summary="Alive")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", operation_id="readyz", summary="MongoDB, Redis and the storage answer")
async def readyz(state: State) -> JSONResponse:
    status, body = await state.readiness.answer()
    return JSONResponse(body, status)


@router.get(
    "/metrics",
    operation_id="metrics",
    summary="Prometheus metrics",
    description="The Prometheus text format",
    response_class=PlainTextResponse,
)
async def prometheus_metrics(state: State) -> Response:
    try:
        await metrics.QUEUED.refresh(state.redis, state.settings)
    except (RedisError, OSError) as exc:  # the other metrics still answer; the queue's are the last read
        log.warning("could not read the tenants' queues for /metrics: %s", exc)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
