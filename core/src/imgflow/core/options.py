"""What a job asks for, read from raw values into ``ThumbnailSpec``s: the upload form's fields, the
JSON of its ``variants`` field, a preset of the service's settings, an ImageJob's spec. Every
value is checked here, once, and anything wrong raises ``InvalidOption`` with a sentence that
names the field (``variants[1].width must be ...``), which the API answers as a 422.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic.alias_generators import to_camel

from imgflow.core.outputs import (
    COMPASS,
    GRAVITY_PATTERN,
    MAX_BLUR,
    MAX_PIXELATE,
    MAX_SHARPEN,
    MAX_VARIANTS,
    MAX_WATERMARK_MARGIN,
    SMART,
    WATERMARK_ID,
    Fit,
    OutputFormat,
    OutputLimits,
    ThumbnailSpec,
)

# the options of one output, as the form and the JSON of variants name them
OPTION_FIELDS = (
    *("width", "height", "fit", "format", "gravity"),
    *("blur", "sharpen", "pixelate", "grayscale", "quality"),
    *("watermark", "watermarkPosition", "watermarkMargin", "watermarkOpacity", "watermarkScale"),
    *("animated", "enlarge", "blurhash"),
)
VARIANT_FIELDS = ("name", *OPTION_FIELDS)
WATERMARK_PLACEMENT = ("watermarkPosition", "watermarkMargin", "watermarkOpacity", "watermarkScale")

E = TypeVar("E", Fit, OutputFormat)
# what a variant name may be, in words (ThumbnailSpec.name's pattern decides)
_NAME_RULE = (
    "{at}name must be 1 to 32 letters, digits, '_', '@' or '-' (starting with a letter or digit), "
    "not {name!r}."
)


class InvalidOption(ValueError):
    """A value a job may not have; the message names the field."""


@dataclass(frozen=True)
class Outputs:
    specs: list[ThumbnailSpec]  # the first is the job's thumbnail
    preset: str | None = None
    named: bool = False  # variants (named, listed in the result) rather than one thumbnail

    def fields(self, option: str) -> list[str]:
        """How each output's ``option`` is named in messages, in order."""
        return [f"variants[{i}].{option}" for i in range(len(self.specs))] if self.named else [option]


def accepted_format(accept: str) -> OutputFormat:
    """``format=auto``: the best format the client's Accept header takes: AVIF > WebP > JPEG."""
    taken = set()
    for item in accept.split(","):
        media, _, params = item.strip().partition(";")
        q = params.strip().removeprefix("q=") if params.strip().startswith("q=") else "1"
        try:
            if float(q) > 0:
                taken.add(media.strip().lower())
        except ValueError:
            continue
    for fmt in (OutputFormat.avif, OutputFormat.webp):
        if fmt.media_type in taken:
            return fmt
    return OutputFormat.jpeg


def read_outputs(
    fields: Mapping[str, str],
    presets: Mapping[str, list[dict[str, object]]],
    limits: OutputLimits,
    accept: str = "",
) -> Outputs:
    """The outputs a job's form asks for: one thumbnail from the option fields, or the variants of
    its ``variants`` (JSON) or ``preset`` field."""
    variants, preset = fields.get("variants", "").strip(), fields.get("preset", "").strip()
    if not variants and not preset:
        return Outputs([read_spec(fields, limits, accept)])
    if variants and preset:
        raise InvalidOption("Give variants or preset, not both.")
    given = [name for name in OPTION_FIELDS if fields.get(name, "").strip()]
    if given:
        raise InvalidOption(
            f"{', '.join(given)} cannot be given beside {'variants' if variants else 'preset'}: "
            "each variant carries its own options."
        )
    if preset:
        return read_preset(preset, presets, limits, accept)
    try:
        items = json.loads(variants)
    except ValueError:
        raise InvalidOption(
            'variants must be a JSON list of objects, e.g. [{"name": "small", "width": 200}].'
        ) from None
    return Outputs(read_variants(items, limits, accept), named=True)


def read_preset(
    name: str,
    presets: Mapping[str, list[dict[str, Any]]],
    limits: OutputLimits,
    accept: str = "",
    where: str = "preset",
) -> Outputs:
    if name not in presets:
        known = ", ".join(sorted(presets)) or "none are configured"
        raise InvalidOption(f"{where} must be one of the service's presets ({known}), not {name!r}.")
    return Outputs(read_variants(presets[name], limits, accept), preset=name, named=True)


def read_variants(
    items: object, limits: OutputLimits, accept: str = "", where: str = "variants"
) -> list[ThumbnailSpec]:
    """Named outputs from a JSON-like list of objects (the form's variants, a preset, an
    ImageJob's spec): 1 to ``MAX_VARIANTS``, names unique."""
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_VARIANTS:
        raise InvalidOption(f"{where} must be a list of 1 to {MAX_VARIANTS} objects.")
    specs: list[ThumbnailSpec] = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]."
        if not isinstance(item, dict):
            raise InvalidOption(f"{where}[{i}] must be an object with a name and options.")
        unknown = sorted(set(item) - set(VARIANT_FIELDS))
        if unknown:
            raise InvalidOption(
                f"{at}{unknown[0]} is not an option; the options are {', '.join(VARIANT_FIELDS)}."
            )
        name = item.get("name")
        if not isinstance(name, str):
            raise InvalidOption(_NAME_RULE.format(at=at, name=name))
        options = {key: value for key, value in item.items() if key != "name"}
        spec = read_spec(as_fields(options), limits, accept, at, variant_name=name)
        if any(other.name == name for other in specs):
            raise InvalidOption(f"{at}name {name!r} is used twice; each variant needs its own.")
        specs.append(spec)
    return specs


def as_fields(values: Mapping[str, object]) -> dict[str, str]:
    """JSON values as the form would have sent them (true -> "true", 400 -> "400"; null: absent)."""
    return {
        key: ("true" if value else "false")
        if isinstance(value, bool)
        else value
        if isinstance(value, str)
        else json.dumps(value)
        for key, value in values.items()
        if value is not None
    }


def read_spec(
    fields: Mapping[str, str],
    limits: OutputLimits,
    accept: str = "",
    at: str = "",
    *,
    variant_name: str | None = None,
) -> ThumbnailSpec:
    """One output from option fields given as text (a variant's name beside them); ``at``
    prefixes field names in messages. The spec is built through ``ThumbnailSpec``'s validation, the
    same the worker reads a stored job with, so nothing accepted here is refused there."""

    def size(name: str, default: int) -> int:
        raw = fields.get(name, "").strip()
        if not raw:
            return default
        # isascii: "²".isdigit() is true, and int() refuses it
        if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= limits.max_dimension:
            raise InvalidOption(
                f"{at}{name} must be a whole number from 1 to {limits.max_dimension}, not {raw!r}."
            )
        return int(raw)

    def choice(name: str, enum: type[E], default: E) -> E:
        raw = fields.get(name, "").strip().lower()
        if not raw:
            return default
        try:
            return enum(raw)
        except ValueError:
            allowed = ", ".join(e.value for e in enum)
            raise InvalidOption(f"{at}{name} must be one of {allowed}, not {raw!r}.") from None

    gravity = fields.get("gravity", "").strip().lower() or "centre"
    if not re.match(GRAVITY_PATTERN, gravity):
        raise InvalidOption(
            f"{at}gravity must be one of {', '.join((*COMPASS, *SMART))} or fp:x,y (fractions 0-1 of the "
            f"width and height), not {gravity!r}."
        )
    auto = fields.get("format", "").strip().lower() == "auto"
    values = {
        "name": variant_name,
        "width": size("width", limits.default_size[0]),
        "height": size("height", limits.default_size[1]),
        "fit": choice("fit", Fit, Fit.cover),
        "format": accepted_format(accept) if auto else choice("format", OutputFormat, OutputFormat.jpeg),
        "gravity": gravity,
        "blur": _number(fields, "blur", 0.3, MAX_BLUR, at),
        "sharpen": _number(fields, "sharpen", 0.3, MAX_SHARPEN, at),
        "pixelate": _whole(fields, "pixelate", 2, MAX_PIXELATE, at),
        "grayscale": _flag(fields, "grayscale", at),
        "quality": _whole(fields, "quality", 1, 100, at),
        "animated": _flag(fields, "animated", at, default=True),
        "enlarge": _flag(fields, "enlarge", at),
        "blurhash": _flag(fields, "blurhash", at),
        **_watermark(fields, at),
    }
    try:
        return ThumbnailSpec.model_validate(values)
    except ValidationError as exc:
        raise InvalidOption(_explain(exc, at)) from None


def _explain(exc: ValidationError, at: str) -> str:
    """The model's first objection as a sentence naming the field."""
    error = exc.errors()[0]
    field = str(error["loc"][0]) if error["loc"] else "options"
    if field == "name":
        return _NAME_RULE.format(at=at, name=error["input"])
    return f"{at}{to_camel(field)}: {error['msg']}, not {error['input']!r}."


def _watermark(fields: Mapping[str, str], at: str) -> dict[str, Any]:
    """The watermark options; its placement options only beside a watermark."""
    mark = fields.get("watermark", "").strip()
    if not mark:
        given = [name for name in WATERMARK_PLACEMENT if fields.get(name, "").strip()]
        if given:
            raise InvalidOption(f"{at}{given[0]} needs {at}watermark (the id of an uploaded watermark).")
        return {}
    if not re.match(WATERMARK_ID, mark):
        raise InvalidOption(f"{at}watermark must be a watermark id (wm_ and 16 hex digits), not {mark!r}.")
    position = fields.get("watermarkPosition", "").strip().lower() or "south-east"
    if position not in COMPASS:
        raise InvalidOption(f"{at}watermarkPosition must be one of {', '.join(COMPASS)}, not {position!r}.")
    placement = {
        "watermark_margin": _whole(fields, "watermarkMargin", 0, MAX_WATERMARK_MARGIN, at),
        "watermark_opacity": _number(fields, "watermarkOpacity", 0.05, 1.0, at),
        "watermark_scale": _number(fields, "watermarkScale", 0.01, 1.0, at),
    }
    given_placement = {name: value for name, value in placement.items() if value is not None}
    return {"watermark": mark, "watermark_position": position, **given_placement}


def _number(
    fields: Mapping[str, str], name: str, low: float, high: float, at: str, *, whole: bool = False
) -> float | None:
    """An optional bounded number field."""
    raw = fields.get(name, "").strip()
    if not raw:
        return None
    try:
        value = float(raw) if raw.isascii() else float("nan")
    except ValueError:
        value = float("nan")
    if not low <= value <= high or (whole and not value.is_integer()):
        kind = "a whole number" if whole else "a number"
        raise InvalidOption(f"{at}{name} must be {kind} from {low:g} to {high:g}, not {raw!r}.")
    return value


def _whole(fields: Mapping[str, str], name: str, low: int, high: int, at: str) -> int | None:
    value = _number(fields, name, low, high, at, whole=True)
    return None if value is None else int(value)


def _flag(fields: Mapping[str, str], name: str, at: str, *, default: bool = False) -> bool:
    raw = fields.get(name, "").strip().lower()
    if not raw:
        return default
    if raw == "false":
        return False
    if raw == "true":
        return True
    raise InvalidOption(f"{at}{name} must be true or false, not {raw!r}.")
