"""A tenant's webhook endpoints: where its jobs' completion events go, besides a job's callbackUrl.

Stored in MongoDB, one document per endpoint (``_id`` = its id). The signing secret is kept as is:
signing needs it (HMAC), and it is shown to the tenant only once, when the endpoint is created.
"""

from __future__ import annotations

import base64
import secrets
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field
from pymongo.asynchronous.database import AsyncDatabase

from imgflow.core.jobs import utcnow
from imgflow.core.records import TenantRecords


class Endpoint(BaseModel):
    endpoint_id: str = Field(default_factory=lambda: "we_" + secrets.token_hex(8))
    tenant: str
    url: str
    events: list[str]
    secret: str = Field(default_factory=lambda: "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())
    created_at: datetime = Field(default_factory=utcnow)


class EndpointStore(TenantRecords[Endpoint]):
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        super().__init__(db["webhook_endpoints"], Endpoint, "endpoint_id")
