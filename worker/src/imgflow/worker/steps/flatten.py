"""JPEG has no alpha: composite transparent sources onto white rather than black."""

from __future__ import annotations

from imgflow.core.outputs import OutputFormat
from imgflow.worker.work import Work


def flatten(work: Work) -> Work:
    if work.spec.format is not OutputFormat.jpeg or not work.image.hasalpha():
        return work
    return work.with_image(work.image.flatten(background=[255, 255, 255]))
