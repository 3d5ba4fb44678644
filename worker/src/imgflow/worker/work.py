"""The state that flows through the processing steps."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import pyvips

from imgflow.core.outputs import ThumbnailSpec
from imgflow.worker.steps.geometry import stored_box


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
        return stored_box(self.spec, self.orientation)

    def with_image(self, image: pyvips.Image, orientation: int | None = None) -> Work:
        return replace(
            self, image=image, orientation=self.orientation if orientation is None else orientation
        )
