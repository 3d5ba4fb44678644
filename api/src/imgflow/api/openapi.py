"""The OpenAPI document's pieces FastAPI cannot derive: the multipart forms (read by a streaming
parser, imgflow.api.multipart, not declared as parameters), their examples, and problem details
as the one error shape."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.routing import BaseRoute

from imgflow.api.deps import needed_scopes
from imgflow.api.problems import SUBMIT_OPERATION, ProblemDetails, documented
from imgflow.core.jobs import Priority
from imgflow.core.keys import Scope
from imgflow.core.options import OPTION_FIELDS, WATERMARK_PLACEMENT
from imgflow.core.outputs import (
    COMPASS,
    GRAVITY_PATTERN,
    MAX_BLUR,
    MAX_PIXELATE,
    MAX_SHARPEN,
    MAX_VARIANTS,
    MAX_WATERMARK_MARGIN,
    WATERMARK_ID,
    Fit,
    OutputFormat,
)
from imgflow.core.settings import Settings
from imgflow.core.watermarks import MAX_BYTES, MAX_SIDE

MAX_USER_ID = 128
# no control character, and one character at least that is not a space either
USER_ID = r"^[^\x00-\x1f\x7f]*[^\x00-\x20\x7f][^\x00-\x1f\x7f]*$"
MAX_WATERMARK_NAME = 128
# a name for people: no control characters (MongoDB-wire servers on PostgreSQL store no NUL)
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
# what a webhook or callbackUrl may be (imgflow.core.fetch checks its address too)
MAX_URL = 2048
WEB_URL = r"^[hH][tT][tT][pP][sS]?://[^/?#\s]+"


def multipart_form(required: list[str], properties: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A route's ``openapi_extra`` declaring its multipart form's fields."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": required, "properties": properties}
                }
            },
        }
    }


JOB_PROPERTIES: dict[str, dict[str, Any]] = {
    "file": {
        "type": "string",
        "format": "binary",
        "minLength": 1,
        "description": "The image: JPEG, PNG, GIF, WebP, TIFF or AVIF (AV1 in "
        "HEIF; HEVC-coded HEIC and BMP are refused)",
    },
    "userId": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_USER_ID,
        "pattern": USER_ID,
        "description": "Whose job it is: no control characters, not only spaces (spaces around "
        "it are dropped)",
    },
    "width": {"type": "integer", "minimum": 1, "description": "Default 100"},
    "height": {"type": "integer", "minimum": 1, "description": "Default 100"},
    "fit": {"type": "string", "enum": [f.value for f in Fit], "default": "cover"},
    "format": {
        "type": "string",
        "enum": [*(f.value for f in OutputFormat), "auto"],
        "description": "auto: the best the request's Accept header takes "
        "(AVIF > WebP > JPEG), decided when the job is created",
        "default": "jpeg",
    },
    "gravity": {
        "type": "string",
        "pattern": GRAVITY_PATTERN,
        "default": "centre",
        "description": "What fit=cover keeps: centre, a compass point (north, "
        "south-east, ...), a focal point fp:x,y (fractions of the displayed "
        "width and height), or attention / entropy (libvips smartcrop)",
    },
    "blur": {
        "type": "number",
        "minimum": 0.3,
        "maximum": MAX_BLUR,
        "description": "Gaussian blur sigma (output pixels)",
    },
    "sharpen": {
        "type": "number",
        "minimum": 0.3,
        "maximum": MAX_SHARPEN,
        "description": "Unsharp-mask sigma",
    },
    "pixelate": {
        "type": "integer",
        "minimum": 2,
        "maximum": MAX_PIXELATE,
        "description": "Block size (output pixels)",
    },
    "grayscale": {"type": "boolean", "default": False},
    "quality": {
        "type": "integer",
        "minimum": 1,
        "maximum": 100,
        "description": "Encoder quality (JPEG, WebP, AVIF); default per format",
    },
    "animated": {
        "type": "boolean",
        "description": "An animated GIF or WebP stays animated when the output "
        "format can carry it (gif, webp); false: the first frame. Default true",
    },
    "enlarge": {
        "type": "boolean",
        "default": False,
        "description": "Whether the output may be larger than the source. Default false: the "
        "output is never wider or taller than the source, unless both sides of the box are at most "
        "100 (cover, contain and fill shrink the box, "
        "keeping its shape, to fit the source; inside and outside do not scale up). True: at most "
        "IMGFLOW_MAX_ENLARGEMENT (default 4) times the source's pixels, else 422",
    },
    "blurhash": {
        "type": "boolean",
        "default": False,
        "description": "Also a BlurHash (4x3 components) in the output's placeholder, beside the "
        "ThumbHash, dominant colour and palette every output gets",
    },
    "watermark": {
        "type": "string",
        "pattern": WATERMARK_ID,
        "description": "Id of one of the tenant's watermarks (POST /api/watermarks), "
        "composited onto the output",
    },
    # no "default"s beside the watermark: generated clients would send them
    # without one, which is refused (each needs a watermark)
    "watermarkPosition": {
        "type": "string",
        "enum": list(COMPASS),
        "description": "Where the watermark goes; default south-east",
    },
    "watermarkMargin": {
        "type": "integer",
        "minimum": 0,
        "maximum": MAX_WATERMARK_MARGIN,
        "description": "Output pixels between the watermark and the edges; default 16",
    },
    "watermarkOpacity": {
        "type": "number",
        "minimum": 0.05,
        "maximum": 1,
        "description": "Default 1",
    },
    "watermarkScale": {
        "type": "number",
        "minimum": 0.01,
        "maximum": 1,
        "description": "The watermark's width as a fraction of the output's (default 0.25)",
    },
    "variants": {
        "type": "string",
        "contentMediaType": "application/json",
        "description": "Instead of the options above (and not with preset): a JSON list of up to "
        f"{MAX_VARIANTS} named outputs, each with its own options "
        f"({', '.join(OPTION_FIELDS)}); all are made from one decode of the "
        "source, the first is the job's thumbnailUrl, result.variants lists "
        "them all",
        "example": '[{"name": "card", "width": 400, "height": 300, "format": '
        '"webp"}, {"name": "card@2x", "width": 800, "height": 600, "format": "webp"}]',
    },
    "preset": {
        "type": "string",
        "description": "Instead of the options above: a named set of variants "
        "defined by the service (IMGFLOW_PRESETS; GET /api/presets lists them)",
        "example": "card",
    },
    "priority": {
        "type": "string",
        "enum": [p.value for p in Priority],
        "default": Priority.interactive.value,
        "description": "Which of the tenant's jobs run first within its share of the workers: "
        "interactive, or batch (ImageJobs')",
    },
    "callbackUrl": {
        "type": "string",
        "format": "uri",
        "maxLength": MAX_URL,
        "pattern": WEB_URL,
        "description": "Where to POST the job.completed / job.failed / job.cancelled webhook "
        "(Standard Webhooks signature; needs IMGFLOW_WEBHOOK_SECRET)",
    },
    "reuse": {
        "type": "boolean",
        "description": "Whether the job may complete at once from the outputs of an identical "
        "finished, unexpired job of the tenant (the same bytes and options; result.reusedFrom names "
        "it). Default true; false: decoded again",
    },
}

# one example per option of the form, shown by OpenAPI tools
FORM_EXAMPLES: dict[str, object] = {
    "userId": "user-42",
    "width": 300,
    "height": 200,
    "fit": "cover",
    "format": "webp",
    "gravity": "attention",
    "blur": 2.5,
    "sharpen": 1.0,
    "pixelate": 8,
    "grayscale": False,
    "quality": 80,
    "animated": False,
    "enlarge": False,
    "blurhash": True,
    "watermark": "wm_0123456789abcdef",
    "watermarkPosition": "south-east",
    "watermarkMargin": 16,
    "watermarkOpacity": 0.6,
    "watermarkScale": 0.2,
    "callbackUrl": "https://example.com/hooks/imgflow",
    "reuse": True,
}
for _name, _example in FORM_EXAMPLES.items():
    JOB_PROPERTIES[_name]["example"] = _example
JOB_FORM = multipart_form(["file", "userId"], JOB_PROPERTIES)
# a watermark's placement needs a watermark (imgflow.core.options); that variants, preset and the
# options exclude one another is said in words: schemathesis's coverage phase fails on a "not"
# beside a binary field
JOB_FORM["requestBody"]["content"]["multipart/form-data"]["schema"]["dependentRequired"] = {
    name: ["watermark"] for name in WATERMARK_PLACEMENT
}

WATERMARK_FORM = multipart_form(
    ["file"],
    {
        "file": {
            "type": "string",
            "format": "binary",
            "minLength": 1,
            "description": f"A PNG (its alpha is kept), at most {MAX_SIDE} pixels a side "
            f"and {MAX_BYTES // 1024} KiB",
        },
        "name": {
            "type": "string",
            "maxLength": MAX_WATERMARK_NAME,
            "pattern": PRINTABLE,
            "description": "A label for people",
        },
    },
)


# answers a route may give that it does not declare: its caller's (imgflow.api.deps: too many failed
# authentications from one address) and its JSON body's (not JSON; imgflow.api.bodylimit's bounds)
SECURED = (401, 429)
JSON_BODY = (400, 408, 413)


def _complete(schema: dict[str, Any], settings: Settings) -> None:
    """What the document can say only once the settings are known, and every route's undeclared
    answers; problem details as FastAPI's 422."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                parameter["schema"] = _not_null(parameter["schema"])
            responses = operation.setdefault("responses", {})
            body = operation.get("requestBody", {}).get("content", {})
            undeclared: tuple[int, ...] = SECURED if "security" in operation else ()
            if "application/json" in body:
                undeclared += JSON_BODY
            for status, response in documented(*undeclared).items():
                responses.setdefault(str(status), response)
            if "422" in responses:
                responses["422"] = documented(422)[422]
            form = body.get("multipart/form-data", {}).get("schema")
            if operation.get("operationId") == SUBMIT_OPERATION and form is not None:
                form["properties"] = _job_properties(form["properties"], settings)


def _scopes(schema: dict[str, Any], routes: list[BaseRoute]) -> None:
    """Each operation's description names the scopes its key needs (imgflow.api.deps.require)."""
    needed = {
        route.operation_id: needed_scopes(route)
        for route in (context.original_route for context in iter_route_contexts(routes))
        if isinstance(route, APIRoute)
    }
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if scopes := needed.get(operation.get("operationId")):
                names = " and ".join(scope.value for scope in scopes)
                plural = "s" if len(scopes) > 1 else ""
                admin = "" if Scope.admin in scopes else " (or an admin key)"
                text = f"Needs an API key with the {names} scope{plural}{admin}."
                operation["description"] = "\n\n".join(filter(None, [operation.get("description"), text]))


def _key_bounds(components: dict[str, Any], settings: Settings) -> None:
    """A new key's tenant is not the default one (the bootstrap key's), and its job cost ceiling is
    within the service's (imgflow.api.routes.keys)."""
    tenant = components.get("NewKey", {}).get("properties", {}).get("tenant")
    if tenant is not None:
        tenant["not"] = {"const": settings.default_tenant}
    ceiling = components.get("KeyLimits", {}).get("properties", {}).get("maxJobCost", {})
    for variant in ceiling.get("anyOf", []):
        if variant.get("type") == "integer":
            variant["maximum"] = settings.max_job_cost


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema without FastAPI's null for ``X | None = None``: a query or a header has
    no null, only absence (``required: false``); "null" would be a string, and read as one."""
    variants = schema.get("anyOf", [])
    kept = [variant for variant in variants if variant != {"type": "null"}]
    if len(kept) != 1 or len(variants) != 2:
        return schema
    rest = {key: value for key, value in schema.items() if key != "anyOf"}
    return {**kept[0], **rest}


def _job_properties(properties: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The job form's fields with this service's bounds (a copy: JOB_PROPERTIES is every app's)."""
    bounded = dict(properties)
    for side in ("width", "height"):
        bounded[side] = {**properties[side], "maximum": settings.max_output_dimension}
    if settings.presets:
        names = sorted(settings.presets)
        bounded["preset"] = {**properties["preset"], "enum": names, "example": names[0]}
    return bounded


def install(app: FastAPI, settings: Settings) -> None:
    """Build the document once, with ProblemDetails as every error's schema."""

    def openapi() -> dict[str, Any]:
        # the routes refer to ProblemDetails by $ref; put it (and what it uses) in the components
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            found = ProblemDetails.model_json_schema(ref_template="#/components/schemas/{model}")
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(found.pop("$defs", {}))
            components["ProblemDetails"] = found
            _complete(schema, settings)
            _scopes(schema, app.routes)
            _key_bounds(components, settings)
            # FastAPI documents its own 422 shape; ours is problem details like every other error
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
