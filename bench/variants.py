"""Candidate changes to the worker's thumbnail step, built here from its own pieces so each can be
measured (``bench.studies.investigate``) without touching ``worker/``. ``Variant()`` with no
options makes the same thumbnail as ``make_thumbnail`` and runs the same libvips operations, plus
nothing.

- ``no_copy``: open the bytes as a ``pyvips.Source`` on memory instead of with
  ``new_from_buffer``, which copies the whole encoded file into a fresh allocation each time
  (three times per thumbnail today: 3 x 5.5 MB for a 1080p PNG).
- ``one_header``: read the header once. ``make_thumbnail`` opens the buffer three times: in
  ``probe_buffer``, again in ``open_source`` for the EXIF orientation, and once more to decode.
  Here the probe's image gives the orientation too (``ImageInfo`` would carry it).
- ``crop_first``: for ``cover``, cut the centre out of the shrunk-on-load image first and resize
  only that, instead of resizing the whole image and cropping the result.
- ``shrink_rule="sharp"``: the largest JPEG/WebP load shrink not above the reduction (sharp's
  default, ``fastShrinkOnLoad``), instead of leaving at least 2x for the lanczos3 resize.
- ``webp_scale``: ``"box"`` decodes WebP straight to the cover size (libvips' thumbnail does so),
  ``"2x"`` to twice it, leaving 2x for lanczos3; the default is the power of two JPEG uses.
- ``access="random"``: load without the sequential hint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyvips

from bench.engines import BOX, MAX_PIXELS, MAX_SIDE, QUALITY, SPEC, Source
from imgflow.core.outputs import Fit, OutputFormat
from imgflow.core.probe import _check, probe_buffer, restrict_loaders
from imgflow.worker.pipeline import STEPS
from imgflow.worker.steps.encode import encode
from imgflow.worker.steps.geometry import stored_box
from imgflow.worker.work import Work

# The shrink rule the worker used before these variants were measured (kept to reproduce them):
# the largest JPEG shrink that still leaves a 2x final resize.
SHRINK_FACTORS = (8, 4, 2)


def shrink_factor(width: int, height: int, box: tuple[int, int], fit: Fit) -> int:
    box_w, box_h = box
    reduction = min(width / box_w, height / box_h)
    return next((f for f in SHRINK_FACTORS if reduction >= 2 * f), 1)


def _open(data: bytes, no_copy: bool, **options: Any) -> pyvips.Image:
    if no_copy:
        return pyvips.Image.new_from_source(pyvips.Source.new_from_memory(data), "", **options)
    return pyvips.Image.new_from_buffer(data, "", **options)


@dataclass(frozen=True)
class Variant:
    no_copy: bool = False
    one_header: bool = False
    crop_first: bool = False
    shrink_rule: str = "imgflow"  # or "sharp"
    webp_scale: str = "pow2"  # or "box", "2x"
    access: str = "sequential"  # or "random"

    def __call__(self, source: Source, *, lossless: bool = False) -> bytes:
        data = source.data
        if self.one_header or self.no_copy:  # probe_buffer's own steps, on our choice of opening
            restrict_loaders()
            header = _open(data, self.no_copy, access="sequential")
            info = _check(header, MAX_PIXELS, MAX_SIDE, lambda: data)
            if not self.one_header:
                header = _open(data, self.no_copy, access="sequential")
        else:
            info = probe_buffer(data, max_pixels=MAX_PIXELS, max_side=MAX_SIDE)
            header = pyvips.Image.new_from_buffer(data, "", access="sequential")
        orientation = int(header.get("orientation")) if header.get_typeof("orientation") else 1
        box = stored_box(SPEC, orientation)
        reduction = min(info.width / box[0], info.height / box[1])  # cover
        options: dict[str, Any] = {"access": self.access, "fail_on": "truncated"}
        if info.format == "webp" and self.webp_scale != "pow2":
            scale = (1.0 if self.webp_scale == "box" else 2.0) / reduction
            if scale < 1:
                options["scale"] = scale
        else:
            if self.shrink_rule == "sharp":
                factor = next((f for f in SHRINK_FACTORS if reduction >= f), 1)
            else:
                factor = shrink_factor(info.width, info.height, box, Fit.cover)
            if factor > 1 and info.format == "jpeg":
                options["shrink"] = factor
            elif factor > 1 and info.format == "webp":
                options["scale"] = 1 / factor
        image = _open(data, self.no_copy, **options)
        if self.crop_first:
            image = _crop_then_resize(image, box)
        work = Work(image=image, spec=SPEC, orientation=orientation)
        for step in STEPS:  # resize and crop are no-ops on a box-sized image
            work = step(work)
        return encode(work.image, OutputFormat.png if lossless else SPEC.format, QUALITY)


def _crop_then_resize(image: pyvips.Image, box: tuple[int, int]) -> pyvips.Image:
    box_w, box_h = box
    scale = max(box_w / image.width, box_h / image.height)
    width = min(image.width, max(box_w, round(box_w / scale)))
    height = min(image.height, max(box_h, round(box_h / scale)))
    image = image.extract_area((image.width - width) // 2, (image.height - height) // 2, width, height)
    if (width, height) == box:
        return image
    return image.resize(box_w / width, vscale=box_h / height, kernel="lanczos3")


VARIANTS: dict[str, Variant] = {
    "as_is": Variant(),
    "no_copy": Variant(no_copy=True),
    "one_header": Variant(one_header=True),
    "crop_first": Variant(crop_first=True),
    "sharp_shrink": Variant(shrink_rule="sharp"),
    "webp_box": Variant(webp_scale="box"),
    "webp_2x": Variant(webp_scale="2x"),
    "random_access": Variant(access="random"),
    # no loss against today's thumbnails (see the quality columns)
    "neutral": Variant(no_copy=True, one_header=True, crop_first=True, webp_scale="2x"),
    # sharp's choices too: sharp's speed and sharp's pixels on 1080p JPEG and WebP
    "sharp_like": Variant(
        no_copy=True, one_header=True, crop_first=True, shrink_rule="sharp", webp_scale="box"
    ),
}
LABELS = {
    "as_is": "as it is (= make_thumbnail)",
    "no_copy": "open via pyvips.Source, no copies",
    "one_header": "read the header once",
    "crop_first": "cover: crop, then resize",
    "sharp_shrink": "sharp's JPEG/WebP shrink rule",
    "webp_box": "WebP: decode to the box",
    "webp_2x": "WebP: decode to 2x the box",
    "random_access": "access=random",
    "neutral": "no copy+header once+crop first+WebP 2x",
    "sharp_like": "the above + sharp's shrink, WebP to box",
}
assert BOX == SPEC.width == SPEC.height
