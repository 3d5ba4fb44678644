"""Errors as RFC 9457 problem details: every error the API answers is one of these."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from pymongo.errors import PyMongoError, WaitQueueTimeoutError
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from imgflow.api.pools import PoolExhausted
from imgflow.core.errors import BackendUnavailable

MEDIA_TYPE = "application/problem+json"
METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
log = logging.getLogger("imgflow.api")


class FieldError(BaseModel):
    field: str | None = Field(description="The field at fault (dotted path), if one is")
    message: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details: the body of every error answer."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "about:blank",
                    "title": "Unauthorized",
                    "status": 401,
                    "detail": "Send an API key: 'Authorization: Bearer imgf_...'.",
                    "instance": "/api/image-processing/jobs",
                }
            ]
        },
    )
    type: str = "about:blank"
    title: str = Field(description="Short, the same for every problem of this kind")
    status: int = Field(description="The HTTP status code")
    detail: str = Field(description="What went wrong, in words a person can act on")
    instance: str = Field(description="The request path")
    errors: list[FieldError] | None = Field(None, description="With 422: each invalid field")


_MEANING = {
    400: "Malformed request",
    401: "No API key, or not a valid one",
    403: "The key lacks the scope",
    404: "Not found (or not visible to this key's tenant)",
    408: "The upload was too slow",
    409: "A request with this Idempotency-Key is still being handled",
    413: "Upload too large",
    415: "Not a supported image",
    422: "Invalid field or image",
    429: "Rate limit or quota exceeded; see Retry-After",
    503: "A backing service is unreachable, or this server is too busy; retry after Retry-After",
}


def documented(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, each as problem details."""
    return {
        status: {
            "description": _MEANING[status],
            "content": {MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetails"}}},
        }
        for status in statuses
    }


class Problem(StarletteHTTPException):
    """An error with a status, a short title and a detail a person can act on. An HTTPException so
    that one raised while FastAPI reads a body (imgflow.api.bodylimit) reaches its handler as is."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        *,
        type_: str = "about:blank",
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(status, detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_
        self.headers: dict[str, str] = headers or {}
        self.extensions = extensions

    def __str__(self) -> str:
        return self.detail


# the operation whose outage answers say the job was refused: nothing of it is kept
SUBMIT_OPERATION = "createJob"


def outage(request: Request, exc: Exception) -> Problem:
    """503 with Retry-After for a backing service that failed a request: unreachable, or MongoDB
    not answering within IMGFLOW_MONGODB_TIMEOUT_S; "busy" when the service is up but no
    connection of this process's pool became free in time (too many requests at once). The
    failures of imgflow.core.errors name their service; a driver's error that escaped a route is
    MongoDB's or Redis's."""
    cause = exc
    if isinstance(exc, BackendUnavailable):
        what = exc.what
        # the driver's error under it tells a timeout or an exhausted pool from an outage
        if isinstance(exc.__cause__, Exception):
            cause = exc.__cause__
    elif isinstance(exc, PyMongoError):
        what = "MongoDB"
    else:
        what = "Redis"
    if isinstance(cause, PoolExhausted | WaitQueueTimeoutError):
        pool = "Redis" if isinstance(cause, PoolExhausted) else "MongoDB"
        return Problem(
            503,
            "Service busy",
            f"This server had no free {pool} connection in time: too many requests at once. Retry shortly.",
            headers={"Retry-After": "1"},
        )
    state = "is unreachable"
    if isinstance(cause, PyMongoError) and cause.timeout:
        state = "did not answer within its time limit (IMGFLOW_MONGODB_TIMEOUT_S)"
    route = request.scope.get("route")
    if isinstance(route, APIRoute) and route.operation_id == SUBMIT_OPERATION:
        log.warning("refusing a job: %s %s (%s)", what, state, cause)
        detail = f"{what} {state}; the job was not accepted and nothing was kept. Retry shortly."
    else:
        detail = f"{what} {state}; retry shortly."
    return Problem(503, "Service unavailable", detail, headers={"Retry-After": "5"})


def problem_response(request: Request, problem: Problem) -> JSONResponse:
    body = {
        "type": problem.type,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "instance": request.url.path,
        **problem.extensions,
    }
    return JSONResponse(body, status_code=problem.status, media_type=MEDIA_TYPE, headers=problem.headers)


def _validation_detail(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    errors = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ()) if part not in ("body", "query", "path")]
        errors.append({"field": ".".join(loc) or None, "message": err.get("msg", "invalid")})
    detail = "; ".join(f"{e['field']}: {e['message']}" if e["field"] else e["message"] for e in errors)
    return detail or "The request is invalid.", errors


def allowed_methods(request: Request) -> str:
    """Every method the path answers, for a 405's Allow. Starlette's names only the first route
    whose path matches, and one path (GET and DELETE of a job) can have a route per method."""
    routes = request.app.router.routes
    return ", ".join(
        method
        for method in METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    )


def install(app: FastAPI) -> None:
    """Make every error, ours and the framework's, a problem details response."""

    async def on_problem(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, Problem)
        return problem_response(request, exc)

    async def on_outage(request: Request, exc: Exception) -> JSONResponse:
        return problem_response(request, outage(request, exc))

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        detail, errors = _validation_detail(exc)
        return problem_response(request, Problem(422, "Invalid request", detail, errors=errors))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        title = {400: "Malformed request", 404: "Not found", 405: "Method not allowed"}.get(
            exc.status_code, "HTTP error"
        )
        detail = exc.detail if isinstance(exc.detail, str) else title
        headers = dict(exc.headers or {})
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"There is nothing at {request.url.path}."
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(request)
            detail = f"{request.method} is not one of this path's methods: {headers['Allow']}."
        return problem_response(request, Problem(exc.status_code, title, detail, headers=headers))

    app.add_exception_handler(Problem, on_problem)
    # a pool with no free connection (PoolExhausted, WaitQueueTimeoutError) is among them: "busy"
    for failure in (BackendUnavailable, PyMongoError, RedisError):
        app.add_exception_handler(failure, on_outage)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
