"""The state that flows through the processing steps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import pyvips

from imgflow.core.jobs import ThumbnailSpec

# EXIF orientations that swap width and height when applied
TRANSPOSING = frozenset({5, 6, 7, 8})


@dataclass(frozen=True)
class Work:
    image: pyvips.Image
    spec: ThumbnailSpec
    orientation: int = 1  # EXIF orientation not yet applied to ``image``
    # the job's watermarks by id, decoded (sRGB with alpha), for the watermark step
    watermarks: Mapping[str, pyvips.Image] = field(default_factory=dict)

    @property
    def box(self) -> tuple[int, int]:
        """The target size in the frame of ``image`` as it is now (before any pending rotation)."""
        if self.orientation in TRANSPOSING:
            return self.spec.height, self.spec.width
        return self.spec.width, self.spec.height

    def with_image(self, image: pyvips.Image, orientation: int | None = None) -> Work:
        return replace(
            self, image=image, orientation=self.orientation if orientation is None else orientation
        )
