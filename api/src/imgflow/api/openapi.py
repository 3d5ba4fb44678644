"""The OpenAPI document's pieces FastAPI cannot derive: the multipart forms (read by a streaming
parser, imgflow.api.multipart, not declared as parameters), their examples, and problem details
as the one error shape."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from imgflow.api.problems import ProblemDetails, documented
from imgflow.core.options import OPTION_FIELDS
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
from imgflow.core.watermarks import MAX_BYTES, MAX_SIDE


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
        "description": "The image: JPEG, PNG, GIF, WebP, TIFF or AVIF (AV1 in "
        "HEIF; HEVC-coded HEIC and BMP are refused)",
    },
    "userId": {"type": "string", "maxLength": 128},
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
        "output is never wider or taller than the source (cover, contain and fill shrink the box, "
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
        "description": "Instead of the options above: a JSON list of up to "
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
    "callbackUrl": {
        "type": "string",
        "format": "uri",
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

WATERMARK_FORM = multipart_form(
    ["file"],
    {
        "file": {
            "type": "string",
            "format": "binary",
            "description": f"A PNG (its alpha is kept), at most {MAX_SIDE} pixels a side "
            f"and {MAX_BYTES // 1024} KiB",
        },
        "name": {"type": "string", "maxLength": 128, "description": "A label for people"},
    },
)


def install(app: FastAPI) -> None:
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
            # FastAPI documents its own 422 shape; ours is problem details like every other error
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    if "422" in operation.get("responses", {}):
                        operation["responses"]["422"] = documented(422)[422]
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
