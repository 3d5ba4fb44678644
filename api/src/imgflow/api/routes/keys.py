"""Key management: create (the key is shown once), list (never the key), revoke. Admin scope."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response
from pydantic import ConfigDict, Field

from imgflow.api.deps import AdminKey, AuthFirst, State
from imgflow.api.openapi import PRINTABLE
from imgflow.api.problems import Problem, documented
from imgflow.api.schemas import Camel, Timestamp
from imgflow.core.keys import TENANT_PATTERN, ApiKey, RateLimits, Scope, new_key

router = APIRouter(prefix="/api/admin/keys", tags=["keys"], route_class=AuthFirst)
log = logging.getLogger("imgflow.api")


class KeyLimits(Camel):
    create_per_s: float | None = Field(None, gt=0, le=100_000, description="Creates per second")
    create_burst: int | None = Field(None, ge=1, le=100_000, description="Creates at once above the rate")
    read_per_s: float | None = Field(None, gt=0, le=100_000, description="Reads per second")
    read_burst: int | None = Field(None, ge=1, le=100_000, description="Reads at once above the rate")
    max_job_cost: int | None = Field(
        None,
        ge=1,
        description="Largest estimated cost of one of the key's jobs (ms of worker CPU), at most the "
        "service's IMGFLOW_MAX_JOB_COST; a job above it is refused 422 naming what to reduce",
    )


class NewKey(Camel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"tenant": "acme", "scopes": ["jobs:write", "jobs:read"], "name": "acme web shop"}]
        }
    )

    tenant: str = Field(pattern=TENANT_PATTERN, description="Whose jobs the key creates and sees")
    scopes: list[Scope] = Field(min_length=1, description="jobs:write, jobs:read, admin")
    name: str = Field(
        min_length=1, max_length=100, pattern=PRINTABLE, description="What the key is for, for people"
    )
    limits: KeyLimits = Field(default_factory=KeyLimits, description="Omitted: the service's defaults")


class KeyView(Camel):
    id: str
    tenant: str
    name: str
    scopes: list[Scope]
    limits: KeyLimits
    created_at: Timestamp

    @classmethod
    def of(cls, key: ApiKey) -> KeyView:
        return cls(
            id=key.key_id,
            tenant=key.tenant,
            name=key.name,
            scopes=key.scopes,
            limits=KeyLimits(**key.limits.model_dump()),
            created_at=key.created_at,
        )


class CreatedKey(KeyView):
    key: str = Field(description="The key itself: shown this once, stored only as a hash")


class KeyList(Camel):
    keys: list[KeyView]


@router.post(
    "",
    status_code=201,
    response_model=CreatedKey,
    operation_id="createApiKey",
    summary="Create an API key (shown once)",
    responses=documented(401, 403, 422),
)
async def create_key(body: NewKey, state: State, _: AdminKey, response: Response) -> CreatedKey:
    if body.tenant == state.settings.default_tenant:
        # its jobs are the bootstrap key's and those stored before keys existed
        raise Problem(
            422,
            "Invalid request",
            f"tenant: {body.tenant!r} is the tenant of the bootstrap key and of jobs stored before "
            "keys existed (IMGFLOW_DEFAULT_TENANT); give the key a tenant of its own.",
        )
    ceiling, service = body.limits.max_job_cost, state.settings.max_job_cost
    if ceiling is not None and ceiling > service:
        raise Problem(
            422,
            "Invalid request",
            f"limits.maxJobCost must be at most the service's IMGFLOW_MAX_JOB_COST ({service}), "
            f"not {ceiling}.",
        )
    record, key = new_key(
        body.tenant, body.name, body.scopes, RateLimits(**body.limits.model_dump(by_alias=False))
    )
    await state.keys.insert(record)
    log.info("created API key %s for tenant %s (%s)", record.key_id, record.tenant, ",".join(record.scopes))
    response.headers["Location"] = f"/api/admin/keys/{record.key_id}"
    return CreatedKey(**KeyView.of(record).model_dump(), key=key)


@router.get(
    "",
    response_model=KeyList,
    operation_id="listApiKeys",
    summary="List API keys (never the keys themselves)",
    responses=documented(401, 403, 422),
)
async def list_keys(
    state: State,
    _: AdminKey,
    tenant: Annotated[str | None, Query(pattern=TENANT_PATTERN, description="Only this tenant's")] = None,
) -> KeyList:
    return KeyList(keys=[KeyView.of(k) for k in await state.keys.of_tenant(tenant)])


@router.delete(
    "/{key_id}",
    status_code=204,
    operation_id="revokeApiKey",
    summary="Revoke an API key (on every replica within IMGFLOW_KEY_CACHE_S)",
    responses=documented(401, 403, 404),
)
async def revoke_key(
    key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")], state: State, _: AdminKey
) -> Response:
    if not await state.keys.delete(key_id):
        raise Problem(404, "Not found", f"There is no API key {key_id!r}.")
    state.key_cache.forget(key_id)
    log.info("revoked API key %s", key_id)
    return Response(status_code=204)
