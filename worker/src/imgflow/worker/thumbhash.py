"""ThumbHash (Evan Wallace's reference algorithm, evanw/thumbhash): a picture's look in about 25
bytes, with its colours, alpha and aspect ratio, that a page decodes into a blurred placeholder
while the image loads.

The reference's loops written as numpy products: the DCT of a picture of at most 100x100 is a few
small matrix products, where the loops cost milliseconds in Python. Its arithmetic is the
reference's, rounding included (JavaScript's ``Math.round`` rounds halves up), so a hash made here
is the one its JavaScript makes of the same pixels (tests/test_placeholders.py checks bytes made by
the reference). ``decode`` is the reference's too: what a page shows of a hash.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

MAX_SIDE = 100  # the reference refuses more: encoding larger pictures is slower and no better
Pixels = npt.NDArray[np.uint8]  # height x width x 4, RGBA, not premultiplied
Floats = npt.NDArray[np.float64]
Cosines = Callable[[int, int], Floats]  # (terms, pixels) -> terms x pixels
# RGB -> L (luminance), P (yellow - blue), Q (red - green)
_LPQ = np.array([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, -1.0], [1.0, -1.0, 0.0]])
_LPQ_OF_BYTES = _LPQ.T / 255


def encode(rgba: Pixels) -> bytes:
    """The ThumbHash of an RGBA (or RGB: opaque) picture of at most 100x100."""
    h, w, bands = rgba.shape
    if w > MAX_SIDE or h > MAX_SIDE:
        raise ValueError(f"{w}x{h} does not fit in {MAX_SIDE}x{MAX_SIDE}")
    pixels = rgba.reshape(-1, bands)
    alpha = pixels[:, 3] / 255 if bands == 4 else None
    total_alpha = float(alpha.sum()) if alpha is not None else w * h
    has_alpha = total_alpha < w * h
    l_limit = 5 if has_alpha else 7  # fewer luminance terms where alpha takes room
    lx = max(1, _round(l_limit * w / max(w, h)))
    ly = max(1, _round(l_limit * h / max(w, h)))
    # every channel's DCT terms in one product, as many as the largest channel needs: the DCT is
    # linear, so luminance and the colour differences are taken of the RGB terms after
    nx, ny = max(3, lx, 5 if has_alpha else 3), max(3, ly, 5 if has_alpha else 3)
    if alpha is not None and has_alpha:  # composite atop the average colour
        rgb = pixels[:, :3] / 255
        average = alpha @ rgb / total_alpha if total_alpha else np.zeros(3)
        composited = average + alpha[:, None] * (rgb - average)
        terms = dct(np.column_stack([composited, alpha]).reshape(h, w, 4), nx, ny)
        factors = np.column_stack([terms[:, :3] @ _LPQ.T, terms[:, 3]])  # term, channel
    else:
        factors = dct(rgba[..., :3], nx, ny) @ _LPQ_OF_BYTES
    index, starts, lengths = _layout(max(3, lx), max(3, ly), has_alpha, nx)
    ac = factors.reshape(-1)[index]  # every channel's AC terms, one after the other
    scales = np.maximum.reduceat(np.abs(ac), starts)
    scaled = np.repeat(scales > 0, lengths)  # a channel whose terms are all 0 keeps them
    ac[scaled] = 0.5 + 0.5 * ac[scaled] / np.repeat(scales, lengths)[scaled]
    (l_dc, p_dc, q_dc), (l_scale, p_scale, q_scale) = factors[0, :3].tolist(), scales[:3].tolist()
    header24 = (
        _round(63 * l_dc)
        | _round(31.5 + 31.5 * p_dc) << 6
        | _round(31.5 + 31.5 * q_dc) << 12
        | _round(31 * l_scale) << 18
        | int(has_alpha) << 23
    )
    landscape = w > h
    header16 = (
        (ly if landscape else lx) | _round(63 * p_scale) << 3 | _round(63 * q_scale) << 9 | landscape << 15
    )
    out = bytearray([header24 & 255, header24 >> 8 & 255, header24 >> 16, header16 & 255, header16 >> 8])
    if has_alpha:
        out.append(_round(15 * float(factors[0, 3])) | _round(15 * float(scales[3])) << 4)
    nibbles = np.floor(15 * ac + 0.5).astype(np.uint8)  # Math.round, as _round
    if len(nibbles) % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    packed: bytes = (nibbles[0::2] | nibbles[1::2] << 4).tobytes()
    return bytes(out) + packed


def decode(thumbhash: bytes) -> Pixels:
    """The placeholder a ThumbHash renders to, RGBA, 32 pixels on its longer side."""
    header24 = thumbhash[0] | thumbhash[1] << 8 | thumbhash[2] << 16
    header16 = thumbhash[3] | thumbhash[4] << 8
    l_dc = (header24 & 63) / 63
    p_dc = (header24 >> 6 & 63) / 31.5 - 1
    q_dc = (header24 >> 12 & 63) / 31.5 - 1
    l_scale = (header24 >> 18 & 31) / 31
    has_alpha = bool(header24 >> 23)
    p_scale = (header16 >> 3 & 63) / 63
    q_scale = (header16 >> 9 & 63) / 63
    landscape = bool(header16 >> 15)
    lx = max(3, (5 if has_alpha else 7) if landscape else header16 & 7)
    ly = max(3, header16 & 7 if landscape else (5 if has_alpha else 7))
    a_dc = (thumbhash[5] & 15) / 15 if has_alpha else 1.0
    a_scale = (thumbhash[5] >> 4) / 15
    start = 6 if has_alpha else 5
    nibbles = [n for byte in thumbhash[start:] for n in (byte & 15, byte >> 4)]
    taken = 0

    def channel(nx: int, ny: int, scale: float) -> list[tuple[int, int, float]]:
        nonlocal taken
        terms = _terms(nx, ny)[1:]
        values = [(nibbles[taken + i] / 7.5 - 1) * scale for i in range(len(terms))]
        taken += len(terms)
        return [(cx, cy, v) for (cx, cy), v in zip(terms, values, strict=True)]

    l_ac = channel(lx, ly, l_scale)
    # the reference boosts saturation 1.25x to make up for the quantisation
    p_ac = channel(3, 3, p_scale * 1.25)
    q_ac = channel(3, 3, q_scale * 1.25)
    a_ac = channel(5, 5, a_scale) if has_alpha else []
    ratio = aspect_ratio(thumbhash)
    w = _round(32 if ratio > 1 else 32 * ratio)
    h = _round(32 / ratio if ratio > 1 else 32)
    fx = np.cos(np.pi / w * np.outer(np.arange(w) + 0.5, np.arange(max(lx, 5))))  # x, cx
    fy = np.cos(np.pi / h * np.outer(np.arange(h) + 0.5, np.arange(max(ly, 5))))  # y, cy

    def render(dc: float, ac: list[tuple[int, int, float]]) -> Floats:
        plane = np.full((h, w), dc)
        for cx, cy, value in ac:
            plane += value * np.outer(fy[:, cy] * 2, fx[:, cx])
        return plane

    lum, p, q = render(l_dc, l_ac), render(p_dc, p_ac), render(q_dc, q_ac)
    a = render(a_dc, a_ac)
    b = lum - 2 / 3 * p
    r = (3 * lum - b + q) / 2
    g = r - q
    # Uint8Array stores truncate
    return (np.clip(np.stack([r, g, b, a], axis=-1), 0, 1) * 255).astype(np.uint8)


def aspect_ratio(thumbhash: bytes) -> float:
    """Width / height of the picture, approximately (from its number of luminance terms)."""
    has_alpha = bool(thumbhash[2] & 0x80)
    landscape = bool(thumbhash[4] & 0x80)
    lx = (5 if has_alpha else 7) if landscape else thumbhash[3] & 7
    ly = thumbhash[3] & 7 if landscape else (5 if has_alpha else 7)
    return lx / ly


@functools.cache
def _terms(nx: int, ny: int) -> list[tuple[int, int]]:
    """The (cx, cy) DCT terms a channel keeps, in the reference's order: a triangle, DC first."""
    return [(cx, cy) for cy in range(ny) for cx in range(nx) if cx * ny < nx * (ny - cy)]


@functools.cache
def _cosines(n: int, size: int) -> Floats:
    """cos(pi / size * c * (x + 0.5)) by c < n, x < size: the DCT's basis."""
    basis = np.cos(np.pi / size * np.outer(np.arange(n), np.arange(size) + 0.5))
    basis.setflags(write=False)  # shared by every call
    return basis


def dct(
    planes: npt.NDArray[np.uint8 | np.float64], nx: int, ny: int, cosines: Cosines | None = None
) -> Floats:
    """The (cy, cx) DCT terms (cy < ny, cx < nx) of each channel of a height x width x channels
    picture, flattened to cy * nx + cx, over the pixels' number: a product by rows, then one by
    columns. Their tables take a few kB, where one table by pixel took hundreds of kB, which a
    decode had pushed out of the caches by the time the placeholder is made. ``cosines``: the
    tables (terms, pixels) -> terms x pixels, ThumbHash's by default."""
    h, w, channels = planes.shape
    cosines = cosines or _cosines
    by_rows = cosines(ny, h) @ planes.reshape(h, w * channels)  # cy, x * channel
    terms = cosines(nx, w) @ by_rows.reshape(ny, w, channels)  # cy, cx, channel
    scaled: Floats = terms.reshape(ny * nx, channels) / (w * h)
    return scaled


@functools.cache
def _layout(
    lx: int, ly: int, has_alpha: bool, nx: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Where each channel's AC terms are in the factors (term cy * nx + cx, channel; flattened),
    in the reference's order (L, P, Q, then A): their indices, and each channel's start and
    length."""
    shapes = [(lx, ly), (3, 3), (3, 3), *([(5, 5)] if has_alpha else [])]
    index: list[int] = []
    starts, lengths = [], []
    for channel, (cx_n, cy_n) in enumerate(shapes):
        terms = _terms(cx_n, cy_n)[1:]
        starts.append(len(index))
        lengths.append(len(terms))
        index += [(cy * nx + cx) * len(shapes) + channel for cx, cy in terms]
    return np.array(index), np.array(starts), np.array(lengths)


def _round(value: float) -> int:
    """JavaScript's Math.round: halves up (Python's round takes them to even)."""
    return math.floor(value + 0.5)
