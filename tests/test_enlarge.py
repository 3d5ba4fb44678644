"""Enlargement: by default an output is never wider or taller than its source (imgproxy's default),
whatever box a job asks for; ``enlarge=true`` lets it grow, up to IMGFLOW_MAX_ENLARGEMENT times the
source's pixels, and the cost at the door counts the pixels that will be made."""

from __future__ import annotations

import json

import pyvips

from imgflow.core import cost
from imgflow.core.outputs import OutputFormat, ThumbnailSpec
from imgflow.harness import images
from imgflow.harness.client import submit, wait_finished
from tests.conftest import Stack

SOURCE = (64, 48)
BOXES = [  # each fit asked for 200x200 (or 200x100) of a 64x48 source, and what it makes
    ({"name": "cover", "width": 200, "height": 200}, (48, 48)),  # the box's shape, at the source's scale
    ({"name": "wide", "width": 200, "height": 100}, (64, 32)),
    ({"name": "contain", "width": 200, "height": 200, "fit": "contain"}, (48, 48)),
    ({"name": "fill", "width": 200, "height": 200, "fit": "fill"}, (48, 48)),
    ({"name": "inside", "width": 200, "height": 200, "fit": "inside"}, (64, 48)),  # the source as it is
    ({"name": "outside", "width": 200, "height": 200, "fit": "outside"}, (64, 48)),
    ({"name": "smaller", "width": 32, "height": 32}, (32, 32)),  # within the source: as asked
    ({"name": "contract", "width": 100, "height": 100}, (100, 100)),  # a small box: always as asked
    ({"name": "enlarged", "width": 120, "height": 90, "enlarge": True}, (120, 90)),  # 3.5x its pixels
]


async def test_outputs_are_no_larger_than_the_source_unless_asked(stack: Stack) -> None:
    variants = json.dumps([box for box, _ in BOXES])
    reply = await submit(stack.client, images.jpeg(*SOURCE), variants=variants)
    assert reply.status_code == 202, reply.text
    job = await wait_finished(stack.client, reply.json()["jobId"])
    assert job["status"] == "completed", job
    made = job["result"]["variants"]
    for box, expected in BOXES:
        variant = made[str(box["name"])]
        assert (variant["width"], variant["height"]) == expected, (box, variant)
        image = pyvips.Image.new_from_buffer((await stack.client.get(variant["url"])).content, "")
        assert (image.width, image.height) == expected, box
    shown = {v["name"]: v for v in job["variants"]}
    assert shown["enlarged"]["enlarge"] is True and "enlarge" not in shown["cover"]


async def test_enlarging_is_bounded_and_checked_at_the_door(stack: Stack) -> None:
    source = images.jpeg(*SOURCE)
    too_large = await submit(stack.client, source, width="200", height="200", enlarge="true")
    assert too_large.status_code == 422, too_large.text
    problem = too_large.json()
    assert problem["title"] == "Thumbnail too large"
    assert "enlarge=true would make a 200x200 image" in problem["detail"], problem
    assert "IMGFLOW_MAX_ENLARGEMENT" in problem["detail"], problem

    variants = json.dumps([{"name": "ok"}, {"name": "huge", "width": 400, "height": 300, "enlarge": True}])
    named = await submit(stack.client, source, variants=variants)
    assert named.status_code == 422 and named.json()["detail"].startswith("variants[1].enlarge=true")

    unclear = await submit(stack.client, source, enlarge="maybe")
    assert unclear.status_code == 422
    assert unclear.json()["detail"] == "enlarge must be true or false, not 'maybe'."


def test_the_cost_counts_the_pixels_made() -> None:
    small = cost.Source(*SOURCE)
    box = ThumbnailSpec(width=2000, height=2000, format=OutputFormat.avif)
    # not enlarged, a 2000x2000 box of this source is a 48x48 output, and costs as much
    made = ThumbnailSpec(width=48, height=48, format=OutputFormat.avif)
    assert cost.estimate([box], small) == cost.estimate([made], small)
    enlarged = box.model_copy(update={"enlarge": True})
    assert cost.estimate([enlarged], small) > 100 * cost.estimate([box], small)
