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

import math

import numpy as np
import numpy.typing as npt

MAX_SIDE = 100  # the reference refuses more: encoding larger pictures is slower and no better
Pixels = npt.NDArray[np.uint8]  # height x width x 4, RGBA, not premultiplied
Floats = npt.NDArray[np.float64]
# RGB -> L (luminance), P (yellow - blue), Q (red - green)
_LPQ = np.array([[1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, -1.0], [1.0, -1.0, 0.0]])


def encode(rgba: Pixels) -> bytes:
    """The ThumbHash of an RGBA picture of at most 100x100."""
    h, w = rgba.shape[:2]
    if w > MAX_SIDE or h > MAX_SIDE:
        raise ValueError(f"{w}x{h} does not fit in {MAX_SIDE}x{MAX_SIDE}")
    flat = rgba.reshape(-1, 4).astype(np.float64) / 255
    alpha = flat[:, 3]
    total_alpha = float(alpha.sum())
    has_alpha = total_alpha < w * h
    l_limit = 5 if has_alpha else 7  # fewer luminance terms where alpha takes room
    lx = max(1, _round(l_limit * w / max(w, h)))
    ly = max(1, _round(l_limit * h / max(w, h)))
    rgb = flat[:, :3]
    if has_alpha:  # composite atop the average colour
        average = alpha @ rgb / total_alpha if total_alpha else np.zeros(3)
        rgb = average + alpha[:, None] * (rgb - average)
    # luminance and two colour differences, and alpha: channel, y, x
    channels = np.vstack([(rgb @ _LPQ.T).T, alpha]).reshape(4, h, w)
    # every channel's DCT terms in one product, as many as the largest needs
    nx, ny = max(3, lx, 5 if has_alpha else 3), max(3, ly, 5 if has_alpha else 3)
    cos_x = np.cos(np.pi / w * np.outer(np.arange(nx), np.arange(w) + 0.5))  # cx, x
    cos_y = np.cos(np.pi / h * np.outer(np.arange(ny), np.arange(h) + 0.5))  # cy, y
    factors = (cos_y @ channels @ cos_x.T / (w * h)).tolist()  # channel, cy, cx
    l_dc, l_ac, l_scale = _channel(factors[0], max(3, lx), max(3, ly))
    p_dc, p_ac, p_scale = _channel(factors[1], 3, 3)
    q_dc, q_ac, q_scale = _channel(factors[2], 3, 3)
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
    acs = [l_ac, p_ac, q_ac]
    if has_alpha:
        a_dc, a_ac, a_scale = _channel(factors[3], 5, 5)
        out.append(_round(15 * a_dc) | _round(15 * a_scale) << 4)
        acs.append(a_ac)
    nibbles = [_round(15 * f) for ac in acs for f in ac]
    for i in range(0, len(nibbles), 2):
        out.append(nibbles[i] | (nibbles[i + 1] << 4 if i + 1 < len(nibbles) else 0))
    return bytes(out)


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


def _terms(nx: int, ny: int) -> list[tuple[int, int]]:
    """The (cx, cy) DCT terms a channel keeps, in the reference's order: a triangle, DC first."""
    return [(cx, cy) for cy in range(ny) for cx in range(nx) if cx * ny < nx * (ny - cy)]


def _channel(factors: list[list[float]], nx: int, ny: int) -> tuple[float, list[float], float]:
    """A channel's DC term, its AC terms scaled to 0-1 and their scale, from its factors by cy, cx."""
    ac = [factors[cy][cx] for cx, cy in _terms(nx, ny)[1:]]
    scale = max((abs(f) for f in ac), default=0.0)
    if scale:
        ac = [0.5 + 0.5 / scale * f for f in ac]
    return factors[0][0], ac, scale


def _round(value: float) -> int:
    """JavaScript's Math.round: halves up (Python's round takes them to even)."""
    return math.floor(value + 0.5)
