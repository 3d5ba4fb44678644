"""Hooks of tests/test_schemathesis.py's runs (SCHEMATHESIS_HOOKS names this module).

A request can be valid by the document and still be refused for what it names or carries, which
no schema can say: bytes that are not an image the service reads, a watermark id that is not the
tenant's, a cursor it did not hand out. Those refusals have titles of their own, listed here with
why; a refusal of a schema-valid request under any other title is a failure of the run.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any
from urllib.parse import urlsplit

import schemathesis
from schemathesis.core.failures import Failure
from schemathesis.openapi.checks import RejectedPositiveData

BEYOND_THE_SCHEMA = {
    "Unsupported image": "the file's bytes are not an image of a format the service reads",
    "Image cannot be decoded": "the file's bytes are a damaged image",
    "Image too large": "the source image is larger than the service's bounds",
    "Thumbnail too large": "an output larger than the bounds for this source's size",
    "Animation too large": "an animated output beyond the frame bounds for this source",
    "Job too costly": "the outputs cost more than the limit for this source's size",
    "Watermark too large": "the watermark image is larger than the bounds",
    "Unknown watermark": "a watermark id that is not one of the tenant's",
    "URL refused": "a URL whose address is not public, or that has no host",
    "Invalid cursor": "a cursor the service did not hand out",
    "Page too deep": "page x limit beyond IMGFLOW_LIST_MAX_OFFSET: two parameters together",
    "Idempotency-Key reused": "the key was used before for another request",
}
# a job's refusals by their detail: the JSON inside its variants field (a form field's schema is a
# string's: generators send any string), and variants, preset and the options given together
# (a "not" beside a binary field fails schemathesis's coverage phase, so the form says it in words)
VARIANTS = "variants"
TOGETHER = ("Give variants or preset, not both.", "cannot be given beside")


def _beyond_the_schema(response: schemathesis.Response) -> bool:
    try:
        problem: Any = json.loads(response.content)
    except ValueError:
        return False
    if not isinstance(problem, dict):
        return False
    detail = str(problem.get("detail", ""))
    return (
        problem.get("title") in BEYOND_THE_SCHEMA
        or detail.startswith(VARIANTS)
        or any(words in detail for words in TOGETHER)
    )


@schemathesis.hook
def filter_failure(
    context: schemathesis.HookContext,
    failure: Failure,
    case: schemathesis.Case[Any],
    response: schemathesis.Response,
) -> bool:
    """Keep every failure but the refusal of a valid request for a reason the schema cannot hold."""
    return not (isinstance(failure, RejectedPositiveData) and _beyond_the_schema(response))


@schemathesis.hook
def before_call(
    context: schemathesis.HookContext, case: schemathesis.Case[Any], kwargs: dict[str, Any]
) -> None:
    """Send no URL naming a public address: the API registers it as a webhook, and a job cancelled
    later would be delivered there. Made-up host names are safe: the test's name server knows none."""
    values = case.body.values() if isinstance(case.body, dict) else ()
    for value in values:
        if isinstance(value, str) and "://" in value:
            try:
                public = ipaddress.ip_address(urlsplit(value).hostname or "").is_global
            except ValueError:  # no address (a name), or not a URL
                continue
            assert not public, f"a generated URL names a public address, not sent: {value}"
