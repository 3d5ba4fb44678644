"""What a job's result says of its pictures beside their files: the source's facts (as its header
gives them) and each output's placeholder (a ThumbHash, a BlurHash when asked, its dominant colour
and palette), for a page to show before, or instead of, the image. The worker makes them
(imgflow.worker.placeholder); the job record carries them (imgflow.core.jobs).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from imgflow.core.outputs import ANIMATED_SOURCES

if TYPE_CHECKING:  # the probe needs libvips, which not every process imports
    from imgflow.core.probe import ImageInfo

PALETTE_SIZE = 5
HEX_COLOUR = r"^#[0-9a-f]{6}$"


class SourceFacts(BaseModel):
    """The source image as its header describes it."""

    format: str = Field(description="jpeg, png, gif, webp, tiff or avif")
    width: int = Field(description="As stored: orientation 5-8 turn the picture a quarter when shown")
    height: int
    orientation: int = Field(
        description="EXIF orientation, 1-8 (1: upright; 1 for AVIF, turned by its boxes)"
    )
    has_alpha: bool
    animated: bool = Field(description="A GIF or WebP of more than one frame")
    frames: int = Field(description="Frames of the animation; 1 for a still")
    icc_profile: str | None = Field(None, description="The embedded ICC profile's name for itself, if any")

    @classmethod
    def of(cls, info: ImageInfo) -> SourceFacts:
        animated = info.format in ANIMATED_SOURCES and info.pages > 1
        return cls(
            format=info.format,
            width=info.width,
            height=info.height,
            orientation=info.orientation,
            has_alpha=info.alpha,
            animated=animated,
            frames=info.pages if animated else 1,
            icc_profile=info.profile_name,
        )


class Placeholder(BaseModel):
    """An output's look in a few bytes, made from its pixels before encoding."""

    thumbhash: str = Field(
        description="ThumbHash of the output (base64): its colours, alpha and aspect ratio in about 25 "
        "bytes, for a blurred placeholder (thumbhash.js thumbHashToDataURL)"
    )
    blurhash: str | None = Field(None, description="BlurHash (4x3 components), when the output asked for it")
    dominant_color: str = Field(pattern=HEX_COLOUR, description="The palette's first colour, #rrggbb")
    palette: list[str] = Field(
        max_length=PALETTE_SIZE, description="Up to 5 colours of the output, #rrggbb, most common first"
    )
