"""Property-based: whatever a client puts in a cursor or a form field, the answer is never a 500
and never Python's own words — a 2xx, or a 4xx with problem details."""

from __future__ import annotations

import base64
import json

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imgflow.harness import images
from imgflow.harness.client import AUTH, JOBS
from tests.conftest import Stack

# what leaks when an exception reaches the client unhandled or is quoted verbatim
PYTHON_WORDS = ("Traceback", "invalid literal", "Error:", "Exception", 'File "')
TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=200)
TINY_PNG = images.png_alpha(8, 8)
EXAMPLES = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def check_answer(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.headers["content-type"] == "application/problem+json", response.text
        problem = response.json()
        assert problem["status"] == response.status_code
        assert problem["detail"]
        assert not any(word in response.text for word in PYTHON_WORDS), response.text


def json_values() -> st.SearchStrategy[object]:
    return st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | TEXT,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
        max_leaves=30,
    )


def cursors() -> st.SearchStrategy[str]:
    """Raw text, base64 of arbitrary bytes, base64 of arbitrary JSON, and of deeply nested arrays."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).decode()

    return st.one_of(
        TEXT,
        st.binary(max_size=300).map(b64),
        json_values().map(lambda value: b64(json.dumps(value).encode())),
        st.integers(1, 5000).map(lambda depth: b64(("[" * depth + "]" * depth).encode())),
    )


@EXAMPLES
@given(cursor=cursors())
def test_any_cursor(stack: Stack, cursor: str) -> None:
    with httpx.Client(base_url=stack.base_url, timeout=30, headers=AUTH) as client:
        check_answer(client.get("/api/image-processing/users/prop/jobs", params={"cursor": cursor}))


FIELDS = ("userId", "width", "height", "fit", "format")


@EXAMPLES
@given(field=st.sampled_from(FIELDS), value=TEXT | st.integers().map(str))
def test_any_form_value(stack: Stack, field: str, value: str) -> None:
    form = {"userId": "prop", field: value}
    with httpx.Client(base_url=stack.base_url, timeout=30, headers=AUTH) as client:
        response = client.post(JOBS, files={"file": ("a.png", TINY_PNG, "image/png")}, data=form)
    check_answer(response)


@EXAMPLES
@given(query=st.dictionaries(st.sampled_from(["cursor", "page", "limit"]), TEXT, min_size=1))
def test_any_listing_query(stack: Stack, query: dict[str, str]) -> None:
    with httpx.Client(base_url=stack.base_url, timeout=30, headers=AUTH) as client:
        check_answer(client.get("/api/image-processing/users/prop/jobs", params=query))
