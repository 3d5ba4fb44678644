"""How close each engine's thumbnail is to an ideal one: PSNR in dB against a reference.

The reference is what a thumbnailer with no shortcuts would make: a full-size decode (no
shrink-on-load) in float, one lanczos3 resize over the whole reduction (``gap=0``: no box
pre-shrink) at the exact cover scale, the exact centre, not encoded.

Engines place a ``cover`` crop differently by a fraction of a pixel (one crops the source at a
fractional offset, another rounds the resized width and crops whole pixels), and half a pixel of
shift costs a textured image more PSNR than anything we want to compare (rounding the resized size
also stretches one axis by up to half a pixel, which is left in the score). So the reference is
rendered at 8x the thumbnail's scale once per image, and each engine is scored against the best
of the 100x100 windows taken from it at 1/8-pixel steps (within 1 px of the centre across, half a
pixel down), each window reduced 8x with lanczos3. What is left is the difference in detail,
aliasing, ringing and colour, plus the JPEG encoding at quality 85 that every engine's figure
includes. PSNR = 10 log10(255^2 / MSE) over the three sRGB bands; higher is closer.

A thumbnail that fits inside a box (no crop) is scored by ``fitted_psnr``: against the same
full-decode lanczos3 resize made straight to the thumbnail's own width and height, so an engine that
rounds a side the other way is not charged for it.
"""

from __future__ import annotations

import math

import pyvips

from bench import corpus
from bench.engines import BOX

OVERSAMPLE = 8
SEARCH_X = OVERSAMPLE  # 1 px either way, in 1/OVERSAMPLE steps
SEARCH_Y = OVERSAMPLE // 2


class Reference:
    """The ideal thumbnail of one corpus image, at ``OVERSAMPLE`` times its size, in float."""

    def __init__(self, image: corpus.Image) -> None:
        # cover: one scale for both axes, the smallest that fills the box; the centre 100x100 of
        # the result (at a fractional offset) is the ideal thumbnail
        scale = OVERSAMPLE * max(BOX / image.width, BOX / image.height)
        full = pyvips.Image.new_from_buffer(image.path.read_bytes(), "").cast("float")
        self.big = full.resize(scale, kernel="lanczos3", gap=0.0).copy_memory()
        side = OVERSAMPLE * BOX
        self.centre = (round((image.width * scale - side) / 2), round((image.height * scale - side) / 2))
        self._windows: dict[tuple[int, int], pyvips.Image] = {}

    def window(self, dx: int, dy: int) -> pyvips.Image:
        """The 100x100 reference shifted by (dx, dy) eighths of a pixel from the centre crop."""
        side = OVERSAMPLE * BOX
        x = min(max(0, self.centre[0] + dx), self.big.width - side)
        y = min(max(0, self.centre[1] + dy), self.big.height - side)
        if (x, y) not in self._windows:
            crop = self.big.extract_area(x, y, side, side)
            small = crop.resize(1 / OVERSAMPLE, kernel="lanczos3", gap=0.0).clamp(min=0, max=255)
            self._windows[x, y] = small.copy_memory()
        return self._windows[x, y]

    def psnr(self, thumbnail: bytes) -> float:
        """PSNR of an encoded 100x100 thumbnail against its best-aligned reference window."""
        image = pyvips.Image.new_from_buffer(thumbnail, "")
        if (image.width, image.height, image.bands) != (BOX, BOX, 3):
            raise ValueError(f"not a {BOX}x{BOX} RGB thumbnail: {image.width}x{image.height}x{image.bands}")
        pixels = image.cast("float")

        def mse(dx: int, dy: int) -> float:
            diff = self.window(dx, dy) - pixels
            return float((diff * diff).avg())

        best_dx = min(range(-SEARCH_X, SEARCH_X + 1), key=lambda dx: mse(dx, 0))
        return psnr_of(min(mse(best_dx, dy) for dy in range(-SEARCH_Y, SEARCH_Y + 1)))


def psnr_of(mse: float) -> float:
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def fitted_psnr(original: bytes, thumbnail: bytes) -> float:
    """PSNR of an encoded thumbnail of the whole of ``original`` (fit inside a box, no crop)."""
    image = pyvips.Image.new_from_buffer(thumbnail, "")
    if image.bands != 3:
        image = image.flatten() if image.hasalpha() else image
    full = pyvips.Image.new_from_buffer(original, "").cast("float")
    ideal = full.resize(
        image.width / full.width, vscale=image.height / full.height, kernel="lanczos3", gap=0.0
    )
    diff = ideal.clamp(min=0, max=255) - image.cast("float")
    return psnr_of(float((diff * diff).avg()))
