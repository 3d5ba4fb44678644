"""BlurHash (Wolt's reference algorithm, woltapp/blurhash): a picture's look as a short base83
string of DCT terms in linear light, which many image components already decode.

As thumbhash.py, the reference's loops as numpy products; the arithmetic is the reference C
encoder's (the largest AC term by magnitude sets the scale) and ``decode`` its decoder's.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import numpy.typing as npt

from imgflow.worker.thumbhash import dct

# terms across and down: 4x3 is what the reference suggests for most pictures
COMPONENTS = (4, 3)
Pixels = npt.NDArray[np.uint8]  # height x width x 3 (or more: only RGB is read)
Floats = npt.NDArray[np.float64]

_BASE83 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~"
_LINEAR = np.array(
    [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in np.arange(256) / 255]
)


def encode(rgb: Pixels, components: tuple[int, int] = COMPONENTS) -> str:
    """The BlurHash of an sRGB picture (kept small: every pixel enters every term)."""
    nx, ny = components
    # j * nx + i, rgb; the reference's normalisation: 2 for the AC terms
    terms = dct(_LINEAR[rgb[..., :3]], nx, ny, _cosines) * 2
    terms[0] /= 2
    dc, ac = terms[0], terms[1:]
    out = _base83(nx - 1 + (ny - 1) * 9, 1)
    if len(ac):
        quantised = max(0, min(82, math.floor(float(np.abs(ac).max()) * 166 - 0.5)))
        maximum = (quantised + 1) / 166
        out += _base83(quantised, 1)
    else:
        maximum = 1.0
        out += _base83(0, 1)
    r, g, b = _to_srgb(dc).tolist()
    out += _base83(r << 16 | g << 8 | b, 4)
    for term in ac:
        r, g, b = (max(0, min(18, math.floor(_signed_pow(v / maximum, 0.5) * 9 + 9.5))) for v in term)
        out += _base83(r * 19 * 19 + g * 19 + b, 2)
    return out


def decode(blurhash: str, width: int, height: int) -> Pixels:
    """The picture a BlurHash renders to, height x width x 3 sRGB."""
    size = _int83(blurhash[0])
    nx, ny = size % 9 + 1, size // 9 + 1
    if len(blurhash) != 4 + 2 * nx * ny:
        raise ValueError(f"a {nx}x{ny} BlurHash has {4 + 2 * nx * ny} characters, not {len(blurhash)}")
    maximum = (_int83(blurhash[1]) + 1) / 166
    value = _int83(blurhash[2:6])
    colours = [[_LINEAR[value >> 16], _LINEAR[value >> 8 & 255], _LINEAR[value & 255]]]
    for i in range(1, nx * ny):
        value = _int83(blurhash[4 + 2 * i : 6 + 2 * i])
        colours.append(
            [_signed_pow((q - 9) / 9, 2) * maximum for q in (value // 361, value // 19 % 19, value % 19)]
        )
    terms = np.array(colours).reshape(ny, nx, 3)
    cos_x = np.cos(np.pi / width * np.outer(np.arange(width), np.arange(nx)))  # x, i
    cos_y = np.cos(np.pi / height * np.outer(np.arange(height), np.arange(ny)))  # y, j
    linear = np.einsum("yj,jic,xi->yxc", cos_y, terms, cos_x)
    return _to_srgb(linear)


@functools.cache
def _cosines(n: int, size: int) -> Floats:
    """cos(pi / size * c * x) by c < n, x < size: BlurHash's basis."""
    basis: Floats = np.cos(np.pi / size * np.outer(np.arange(n), np.arange(size)))
    basis.setflags(write=False)  # shared by every call
    return basis


def _to_srgb(linear: Floats) -> Pixels:
    v = np.clip(linear, 0, 1)
    srgb = np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055)
    return np.trunc(srgb * 255 + 0.5).astype(np.uint8)


def _signed_pow(value: float, exponent: float) -> float:
    return math.copysign(abs(value) ** exponent, value)


def _base83(value: int, length: int) -> str:
    return "".join(_BASE83[value // 83 ** (length - i) % 83] for i in range(1, length + 1))


def _int83(text: str) -> int:
    value = 0
    for char in text:
        value = value * 83 + _BASE83.index(char)
    return value
