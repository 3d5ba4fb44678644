"""What a job's result says of its pictures beside their files: the source's facts (as its header
gives them) and each output's placeholder (a ThumbHash, a BlurHash when asked, its dominant colour
and palette), for a page to show before, or instead of, the image. The worker makes them
(imgflow.worker.placeholder); the job record carries them (imgflow.core.jobs).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

PALETTE_SIZE = 5
HEX_COLOUR = r"^#[0-9a-f]{6}$"


class SourceFacts(BaseModel):
    """The source image as its header describes it."""

    format: str
    width: int  # as stored; orientation 5-8 turn it a quarter when shown
    height: int
    orientation: int  # EXIF orientation, 1-8 (1: upright)
    has_alpha: bool
    animated: bool  # a GIF or WebP of more than one frame
    frames: int  # of the animation; 1 for a still
    icc_profile: str | None = None  # the embedded ICC profile's name for itself


class Placeholder(BaseModel):
    """An output's look in a few bytes, made from its pixels before encoding."""

    thumbhash: str  # base64 of the ThumbHash's bytes
    blurhash: str | None = None  # made when the output's options ask for it
    dominant_color: str = Field(pattern=HEX_COLOUR)  # the palette's most common colour, "#rrggbb"
    palette: list[str] = Field(max_length=PALETTE_SIZE)  # most common first
