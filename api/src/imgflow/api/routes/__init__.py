"""The HTTP endpoints, one module per resource: each route reads the request, calls the core and
shapes the answer. ``router`` holds them all, in the order the OpenAPI document lists them."""

from __future__ import annotations

from fastapi import APIRouter

from imgflow.api.routes import (
    admin,
    deliveries,
    events,
    jobs,
    keys,
    ops,
    signed,
    thumbnails,
    watermarks,
    webhooks,
)

router = APIRouter()
for resource in (jobs, thumbnails, signed, admin, keys, webhooks, watermarks, events, deliveries, ops):
    router.include_router(resource.router)
