"""What a route declares to get what it needs: the shared state (the connections opened once at
start-up) and the caller (``Reader``, ``Writer``, ``AdminKey``).

Who is calling: the API key in ``Authorization: Bearer``, its tenant, scopes and rate limits.
Routes declare what they need and get the caller's ``Principal``. A replica trusts a key record it
looked up for ``key_cache_s`` (at most 2 s), so a revoked key stops working on every replica
within that. With ``IMGFLOW_AUTH=off`` every caller is an admin of the default tenant, unlimited:
the original's open API.

What a caller without a valid key costs is bounded: a malformed key is refused without a lookup,
an unknown id is looked up once per ``key_cache_s`` (absent records are cached too), and an
address past ``auth_failure_burst`` failed authentications gets 429 without any lookup until its
allowance refills at ``auth_failures_per_s``. Routes with a body authenticate before it is read.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import Depends, Request, Response, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from faststream.redis import RedisBroker
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from imgflow.api.expiring import Expiring
from imgflow.api.problems import Problem
from imgflow.api.ratelimit import Policy, RateLimiter
from imgflow.api.signed_urls import UrlSigner
from imgflow.api.slots import Slots
from imgflow.api.throttle import AuthThrottle
from imgflow.core import logs
from imgflow.core.endpoints import Endpoint, EndpointStore
from imgflow.core.events import ChangeFeed
from imgflow.core.jobs import Job
from imgflow.core.keys import ApiKey, KeyStore, RateLimits, Scope, digest, key_id_of
from imgflow.core.readiness import Readiness
from imgflow.core.settings import AuthMode, Settings
from imgflow.core.storage import Storage
from imgflow.core.store import JobStore
from imgflow.core.tenant_secrets import TenantSecrets
from imgflow.core.watermarks import Watermark, WatermarkStore


@dataclass
class AppState:
    settings: Settings
    mongo: AsyncMongoClient[dict[str, Any]]
    store: JobStore
    storage: Storage
    broker: RedisBroker
    # requests' pool (imgflow.api.pools); the feed, the webhook sender and readiness have their own
    redis: Redis
    webhook_redis: Redis
    feed: ChangeFeed
    readiness: Readiness
    keys: KeyStore
    endpoints: EndpointStore
    tenant_secrets: TenantSecrets
    signer: UrlSigner
    watermarks: WatermarkStore
    key_cache: Expiring[ApiKey | None]
    limiter: RateLimiter
    # Uploads being received: each holds a connection and up to max_upload_bytes of /tmp.
    uploads: Slots = field(init=False)
    # Live-progress streams: each holds a connection and a follower of the feed.
    streams: Slots = field(init=False)
    # Thumbnails being sent: each holds a connection and up to download_memory_bytes.
    downloads: Slots = field(init=False)
    auth_throttle: AuthThrottle = field(init=False)

    def __post_init__(self) -> None:
        settings = self.settings
        self.uploads = Slots(
            "uploads",
            settings.max_concurrent_uploads,
            settings.max_uploads_per_key,
            full_status=503,
            advice="send the next when one has been answered.",
        )
        self.streams = Slots(
            "live-progress streams",
            settings.max_streams,
            settings.max_streams_per_key,
            full_status=429,
            advice="close one, or poll the job, and retry after Retry-After.",
        )
        self.downloads = Slots(
            "downloads",
            settings.max_concurrent_downloads,
            settings.max_downloads_per_key,
            full_status=503,
            advice="fetch the next when one has been received.",
        )
        self.auth_throttle = AuthThrottle(self.settings.auth_failures_per_s, self.settings.auth_failure_burst)


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.imgflow
    return state


async def _state(request: Request) -> AppState:
    # async: FastAPI runs a plain function dependency in its thread pool, a thread hop per request
    return get_state(request)


# what a route declares to get the shared state
State = Annotated[AppState, Depends(_state)]


bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    bearerFormat="imgf_<id>_<secret>",
    description="An API key, created with POST /api/admin/keys (or IMGFLOW_ADMIN_KEY)",
)
BOOTSTRAP_KEY_ID = "bootstrap"
# compared against when a key is malformed or unknown, so a bad key costs the same either way
_NOBODY = digest("imgf_0000000000000000_" + "x" * 43)


@dataclass(frozen=True)
class Principal:
    key_id: str | None
    tenant: str
    scopes: frozenset[Scope]
    limits: RateLimits

    @property
    def admin(self) -> bool:
        return Scope.admin in self.scopes

    @property
    def visible_tenant(self) -> str | None:
        """The tenant whose jobs this caller sees; None: all (admin)."""
        return None if self.admin else self.tenant

    def sees(self, owned: Job | Endpoint | Watermark) -> bool:
        """Whether this key may see (and change) a job or a tenant's record."""
        return self.admin or owned.tenant == self.tenant


def key_cache(store: KeyStore, ttl: float) -> Expiring[ApiKey | None]:
    """Key records by id, each trusted for ``ttl`` seconds (absent ones too: a flood of made-up
    ids costs one lookup per id per ``ttl``)."""
    return Expiring(store.get, ttl)


def _unauthorized(detail: str, error: str | None = None) -> Problem:
    challenge = 'Bearer realm="imgflow"' + (f', error="{error}"' if error else "")
    return Problem(401, "Unauthorized", detail, headers={"WWW-Authenticate": challenge})


def open_principal(settings: Settings) -> Principal:
    return Principal(None, settings.default_tenant, frozenset(Scope), RateLimits())


async def _identify(key: str, state: AppState, address: str) -> Principal | None:
    settings = state.settings
    if settings.admin_key and hmac.compare_digest(digest(key), digest(settings.admin_key)):
        return Principal(BOOTSTRAP_KEY_ID, settings.default_tenant, frozenset(Scope), RateLimits())
    key_id = key_id_of(key)
    if key_id is not None and not state.auth_throttle.may_look_up(address, key_id):
        raise _throttled(state.auth_throttle.retry_after(address), settings)
    record = await state.key_cache.get(key_id) if key_id else None
    if record is None:
        hmac.compare_digest(digest(key), _NOBODY)
        return None
    if not record.matches(key):
        return None
    state.auth_throttle.succeeded(record.key_id)
    if record.tenant == settings.default_tenant and Scope.admin not in record.scopes:
        # made before keys of this tenant were refused: it would see the bootstrap key's jobs
        raise Problem(
            403,
            "Forbidden",
            f"This API key's tenant {record.tenant!r} is the bootstrap key's (IMGFLOW_DEFAULT_TENANT); "
            "make the client a key of a tenant of its own.",
        )
    return Principal(record.key_id, record.tenant, frozenset(record.scopes), record.limits)


def _throttled(wait: float, settings: Settings) -> Problem:
    seconds = max(1, round(wait + 0.5))
    return Problem(
        429,
        "Too many failed authentications",
        f"This address sent more than {settings.auth_failure_burst} missing or invalid API keys; "
        f"retry in {seconds} s.",
        headers={"Retry-After": str(seconds)},
    )


async def authenticate(
    request: Request,
    state: State,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
) -> Principal:
    known: Principal | None = getattr(request.state, "principal", None)
    if known is not None:  # authenticated already, before its body was read (AuthFirst)
        return known
    settings = state.settings
    if settings.auth is AuthMode.off:
        return open_principal(settings)
    address = request.client.host if request.client else ""
    principal = await _identify(credentials.credentials, state, address) if credentials else None
    if principal is None:
        wait = state.auth_throttle.failed(address)
        if wait:
            raise _throttled(wait, settings)
        if credentials is None:
            raise _unauthorized("Send an API key: 'Authorization: Bearer imgf_...'.")
        raise _unauthorized("The API key is not valid (unknown, revoked or mistyped).", "invalid_token")
    logs.bind(keyId=principal.key_id, tenant=principal.tenant)  # on the lines this request logs
    request.state.principal = principal
    return principal


class AuthFirst(APIRoute):
    """A route whose caller is authenticated, and its scopes checked, before its body is read.
    FastAPI reads and parses a declared body before it solves a route's dependencies: without
    this, a caller with no key or without the scope would have its JSON parsed, and a malformed
    one answered 400 or 422 before 401 or 403."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if self.body_field is None:
            return handler
        needed = needed_scopes(self)

        async def authenticated_first(request: Request) -> Response:
            principal = await authenticate(request, get_state(request), await bearer(request))
            _check_scopes(principal, needed)
            return await handler(request)

        return authenticated_first


def _check_scopes(principal: Principal, scopes: tuple[Scope, ...]) -> None:
    lacking = [scope.value for scope in scopes if scope not in principal.scopes]
    if lacking and not principal.admin:
        raise Problem(403, "Forbidden", f"This API key lacks the {' and '.join(map(repr, lacking))} scope.")


def _policy(principal: Principal, settings: Settings, kind: Literal["create", "read"]) -> Policy:
    limits = principal.limits
    if kind == "create":
        return Policy(
            "create",
            limits.create_per_s or settings.create_per_s,
            limits.create_burst or settings.create_burst,
        )
    return Policy("read", limits.read_per_s or settings.read_per_s, limits.read_burst or settings.read_burst)


def require(rate: Literal["create", "read"] | None, *scopes: Scope) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller, if it has ``scopes`` (admin has all) and is within its ``rate``.
    Admin keys are not rate-limited: they are the operator's."""

    async def dependency(
        request: Request, state: State, principal: Annotated[Principal, Depends(authenticate)]
    ) -> Principal:
        _check_scopes(principal, scopes)
        if rate is None or principal.admin or principal.key_id is None:
            return principal
        policy = _policy(principal, state.settings, rate)
        decision = await state.limiter.hit(principal.key_id, policy)
        headers = decision.headers(policy)
        if not decision.allowed:
            wait = max(1, round(decision.retry_after_s + 0.5))
            raise Problem(
                429,
                "Too many requests",
                f"This key may make {policy.per_s:g} {rate} requests per second (bursts of "
                f"{policy.burst}); retry in {wait} s.",
                headers={**headers, "Retry-After": str(wait)},
            )
        request.state.ratelimit = headers
        return principal

    _SCOPES[dependency] = scopes
    return dependency


# each dependency require() made, with the scopes it needs: what AuthFirst checks before a body
_SCOPES: dict[Callable[..., Any], tuple[Scope, ...]] = {}


def needed_scopes(route: APIRoute) -> tuple[Scope, ...]:
    """The scopes a key needs to call ``route`` (an admin key has them all)."""
    calls = [dep.call for dep in route.dependant.dependencies if dep.call is not None]
    found = (scope for call in calls for scope in _SCOPES.get(call, ()))
    return tuple(dict.fromkeys(found))


Reader = Annotated[Principal, Depends(require("read", Scope.jobs_read))]
Writer = Annotated[Principal, Depends(require("create", Scope.jobs_write))]
# An endpoint receives every job of the tenant and the callbackUrl secret signs every job's delivery:
# a key that registers or deletes one, or makes the other, must read the tenant's jobs anyway.
Subscriber = Annotated[Principal, Depends(require("create", Scope.jobs_write, Scope.jobs_read))]
AdminKey = Annotated[Principal, Depends(require(None, Scope.admin))]
