"""A tenant's webhook endpoints: ``POST /api/webhooks`` (the signing secret is shown once),
``GET /api/webhooks``, ``DELETE /api/webhooks/{id}``. Every job of the tenant that finishes with
a subscribed event is delivered to each endpoint (imgflow.core.webhooks). An endpoint disabled
after failing too often says so in the listing (``disabledAt``, ``disabledReason``); delete it
and register it again to resume. ``POST /api/webhooks/secret`` makes the tenant's new secret for its jobs'
``callbackUrl`` deliveries (imgflow.core.tenant_secrets) and shows it once."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Path, Response
from pydantic import ConfigDict, Field
from starlette.convertors import StringConvertor, register_url_convertor

from imgflow.api.deps import AuthFirst, Reader, State, Subscriber
from imgflow.api.openapi import MAX_URL, WEB_URL
from imgflow.api.problems import Problem, documented
from imgflow.api.schemas import Camel, Timestamp
from imgflow.core.endpoints import Endpoint
from imgflow.core.fetch import FetchRefused, check_url
from imgflow.core.webhooks import endpoint_tenants_key, failures_key

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"], route_class=AuthFirst)
ENDPOINT_ID = "we_[0-9a-f]{16}"


class _EndpointId(StringConvertor):
    """An endpoint's id in a path: /api/webhooks/secret is not one, so DELETE there is a 405."""

    regex = ENDPOINT_ID


register_url_convertor("endpoint_id", _EndpointId())
log = logging.getLogger("imgflow.api")
MAX_PER_TENANT = 20
# endpoint.disabled: another endpoint of the tenant was disabled (data: that endpoint's view)
Event = Literal["job.completed", "job.failed", "job.cancelled", "endpoint.disabled"]


def _all_events() -> list[Event]:
    return ["job.completed", "job.failed", "job.cancelled", "endpoint.disabled"]


class NewEndpoint(Camel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"url": "https://example.com/hooks/imgflow", "events": ["job.completed"]}]
        }
    )
    url: str = Field(
        max_length=MAX_URL,
        pattern=WEB_URL,
        json_schema_extra={"format": "uri"},
        description="Where to POST the events (http or https, a public address)",
    )
    events: list[Event] = Field(default_factory=_all_events, min_length=1, description="Events to send")


class EndpointView(Camel):
    id: str
    tenant: str
    url: str
    events: list[str]
    created_at: Timestamp
    disabled_at: Timestamp | None = Field(
        None, description="When deliveries to it stopped, after too many failed attempts in a row"
    )
    disabled_reason: str | None = None

    @classmethod
    def of(cls, endpoint: Endpoint) -> EndpointView:
        return cls(
            id=endpoint.endpoint_id,
            tenant=endpoint.tenant,
            url=endpoint.url,
            events=endpoint.events,
            created_at=endpoint.created_at,
            disabled_at=endpoint.disabled_at,
            disabled_reason=endpoint.disabled_reason,
        )


class CreatedEndpoint(EndpointView):
    secret: str = Field(
        description="Signing secret (whsec_...): shown this once; verify each delivery with it"
    )


class EndpointList(Camel):
    endpoints: list[EndpointView]


@router.post(
    "",
    status_code=201,
    response_model=CreatedEndpoint,
    operation_id="createWebhookEndpoint",
    summary="Register a webhook endpoint for the tenant's jobs (its secret is shown once)",
    responses=documented(401, 403, 409, 422, 429, 503),
)
async def create_endpoint(
    body: NewEndpoint, state: State, principal: Subscriber, response: Response
) -> CreatedEndpoint:
    if len(await state.endpoints.of_tenant(principal.tenant)) >= MAX_PER_TENANT:
        raise _at_cap()  # first: a tenant at its cap costs no lookup
    try:
        await check_url(body.url, state.settings)
    except FetchRefused as exc:
        raise Problem(422, "URL refused", f"url: {exc}") from exc
    endpoint = Endpoint(tenant=principal.tenant, url=body.url, events=sorted(set(body.events)))
    if not await state.endpoints.register(endpoint, MAX_PER_TENANT):  # the cap, checked atomically
        raise _at_cap()
    await state.redis.sadd(endpoint_tenants_key(state.settings), principal.tenant)
    log.info("registered webhook endpoint %s for tenant %s", endpoint.endpoint_id, endpoint.tenant)
    response.headers["Location"] = f"/api/webhooks/{endpoint.endpoint_id}"
    return CreatedEndpoint(**EndpointView.of(endpoint).model_dump(), secret=endpoint.secret)


def _at_cap() -> Problem:
    return Problem(
        409, "Too many endpoints", f"A tenant may register {MAX_PER_TENANT} endpoints; delete one first."
    )


@router.get(
    "",
    response_model=EndpointList,
    operation_id="listWebhookEndpoints",
    summary="The tenant's webhook endpoints (never their secrets)",
    responses=documented(401, 403, 429, 503),
)
async def list_endpoints(state: State, principal: Reader) -> EndpointList:
    found = await state.endpoints.of_tenant(principal.visible_tenant)
    return EndpointList(endpoints=[EndpointView.of(e) for e in found])


@router.delete(
    "/{endpoint_id:endpoint_id}",
    status_code=204,
    operation_id="deleteWebhookEndpoint",
    summary="Stop sending events to an endpoint",
    responses=documented(401, 403, 404, 429, 503),
)
async def delete_endpoint(
    endpoint_id: Annotated[str, Path(pattern=f"^{ENDPOINT_ID}$")], state: State, principal: Subscriber
) -> Response:
    endpoint = await state.endpoints.get(endpoint_id)
    if endpoint is None or not principal.sees(endpoint):
        raise Problem(404, "Not found", f"There is no webhook endpoint {endpoint_id!r}.")
    await state.endpoints.remove(endpoint)
    await state.redis.hdel(failures_key(state.settings), endpoint_id)
    if not await state.endpoints.of_tenant(endpoint.tenant):
        await state.redis.srem(endpoint_tenants_key(state.settings), endpoint.tenant)
    log.info("deleted webhook endpoint %s of tenant %s", endpoint_id, endpoint.tenant)
    return Response(status_code=204)


class SigningSecret(Camel):
    secret: str = Field(
        description="The tenant's new secret (whsec_...) for its jobs' callbackUrl deliveries: "
        "shown this once; verify each delivery with it"
    )
    previous_valid_until: Timestamp | None = Field(
        None, description="Until when deliveries are also signed with the secret it replaces"
    )


@router.post(
    "/secret",
    response_model=SigningSecret,
    operation_id="rotateWebhookSecret",
    summary="Make the tenant's new signing secret for callbackUrl deliveries (shown once)",
    responses=documented(401, 403, 429, 503),
)
async def rotate_secret(state: State, principal: Subscriber) -> SigningSecret:
    grace = timedelta(seconds=state.settings.webhook_secret_grace_s)
    made = await state.tenant_secrets.rotate(principal.tenant, grace)
    log.info("made a new callbackUrl signing secret for tenant %s", principal.tenant)
    return SigningSecret(secret=made.secret, previous_valid_until=made.previous_until)
