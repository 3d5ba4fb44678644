"""A tenant's watermarks: PNG images uploaded once (``POST /api/watermarks``) and named by id in a
job's options; the worker composites them onto the outputs that ask (worker/steps/watermark.py).

The record is in MongoDB (one document per watermark; at most ``MAX_PER_TENANT``, its places in
``watermark_places``: imgflow.core.records.CappedRecords), the image in storage under
``watermark-<id>.png``, which the orphan sweep leaves alone. The worker reads it for each job, so
a deleted watermark fails the jobs accepted with it that are not made yet, as its API says.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from typing import Any

from pydantic import Field
from pymongo.asynchronous.database import AsyncDatabase

from imgflow.core.jobs import utcnow
from imgflow.core.options import Outputs
from imgflow.core.records import CappedRecords, Owned

MAX_BYTES = 1024 * 1024
MAX_SIDE = 2048  # a watermark is scaled to a fraction of the output: more detail is wasted
MAX_PER_TENANT = 100


def watermark_key(watermark_id: str) -> str:
    return f"watermark-{watermark_id}.png"


class Watermark(Owned):
    watermark_id: str = Field(default_factory=lambda: "wm_" + secrets.token_hex(8))
    name: str | None = None
    width: int
    height: int
    bytes: int
    created_at: datetime = Field(default_factory=utcnow)

    @property
    def key(self) -> str:
        return watermark_key(self.watermark_id)


class WatermarkStore(CappedRecords[Watermark]):
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        super().__init__(db["watermarks"], db["watermark_places"], Watermark, "watermark_id")


async def unusable_watermark(outputs: Outputs, tenant: str, store: WatermarkStore) -> str | None:
    """Why one of these outputs cannot have its watermark (none with that id for this tenant), or
    None."""
    for spec, field in zip(outputs.specs, outputs.fields("watermark"), strict=True):
        if spec.watermark is None:
            continue
        found = await store.get(spec.watermark)
        if found is None or found.tenant != tenant:
            return (
                f"{field}: there is no watermark {spec.watermark!r} for tenant {tenant!r}; upload the "
                "PNG with POST /api/watermarks and use the id it answers."
            )
    return None
