"""Bad input gets a clear problem-details answer with the right status, and nothing is kept."""

from __future__ import annotations

import os
import uuid

import httpx
import pytest

from imgflow.harness import images
from imgflow.harness.client import JOBS, submit
from tests.conftest import Stack


def check(response: httpx.Response, status: int, *phrases: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, object] = response.json()
    assert problem["status"] == status
    assert problem["title"] and problem["detail"] and problem["instance"]
    for phrase in phrases:
        assert phrase.lower() in str(problem["detail"]).lower(), problem
    return problem


async def test_empty_file(stack: Stack) -> None:
    check(await submit(stack.client, b""), 422, "empty")


async def test_text_named_jpg(stack: Stack) -> None:
    response = await submit(stack.client, b"hello, I am text\n" * 50, filename="cat.jpg")
    check(response, 415, "not an image", "jpeg, png, gif, webp, tiff")


@pytest.mark.parametrize(
    "data",
    [
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        b"P6\n2 2\n255\n" + b"\x00" * 12,
        b"%PDF-1.4\n%%EOF",
    ],
    ids=["svg", "ppm", "pdf"],
)
async def test_formats_outside_the_allow_list(stack: Stack, data: bytes) -> None:
    check(await submit(stack.client, data, content_type="image/png"), 415, "not an image")


async def test_oversize_upload(stack: Stack) -> None:
    limit = stack.settings.max_upload_bytes
    response = await submit(stack.client, os.urandom(limit + 1))
    problem = check(response, 413, "larger than the limit")
    assert problem["limit"] == limit


async def test_pixel_bomb(stack: Stack) -> None:
    check(await submit(stack.client, images.png_bomb()), 422, "60000x60000", "over the limit")


async def test_an_extreme_shape_within_the_pixel_limit(stack: Stack) -> None:
    """50,000,000 x 1 passes the area limit; its resize once held gigabytes. Refused by side."""
    check(await submit(stack.client, images.png_bomb(50_000_000, 1)), 422, "50000000x1", "16,384")


async def test_missing_user_id(stack: Stack) -> None:
    check(await submit(stack.client, images.jpeg(), user_id=None), 422, "userId")


async def test_missing_file(stack: Stack) -> None:
    response = await stack.client.post(JOBS, data={"userId": "u"}, files={"other": ("x", b"y")})
    check(response, 422, "file")


async def test_multipart_body_without_its_closing_boundary(stack: Stack) -> None:
    """A truncated upload is malformed (400), not "the file is empty" (once a 415)."""
    boundary = "imgflowboundary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="userId"\r\n\r\nu\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode() + images.jpeg(64, 64)
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    check(await stack.client.post(JOBS, content=body, headers=headers), 400, "closing boundary")


async def test_not_multipart(stack: Stack) -> None:
    response = await stack.client.post(JOBS, json={"userId": "u", "file": "aGVsbG8="})
    check(response, 415, "multipart/form-data")


@pytest.mark.parametrize(
    ("fields", "phrase"),
    [
        ({"width": "0"}, "width"),
        ({"height": "99999"}, "height"),
        ({"width": "ten"}, "width"),
        # a digit to str.isdigit() but not to int(): once a 400 quoting Python's ValueError
        ({"width": "\u00b2"}, "width must be a whole number"),
        ({"height": "\u0663"}, "height must be a whole number"),  # ARABIC-INDIC DIGIT THREE
        ({"fit": "stretchy"}, "fit must be one of"),
        ({"format": "bmp"}, "format must be one of"),
    ],
)
async def test_bad_options(stack: Stack, fields: dict[str, str], phrase: str) -> None:
    check(await submit(stack.client, images.jpeg(), **fields), 422, phrase)


async def test_refused_uploads_leave_nothing_behind(stack: Stack) -> None:
    user = f"user-{uuid.uuid4().hex[:8]}"
    for data in (b"", b"text", images.png_bomb()):
        assert (await submit(stack.client, data, user_id=user)).status_code >= 400
    listing = (await stack.client.get(f"/api/image-processing/users/{user}/jobs")).json()
    assert listing == {"jobs": []}
