"""The benchmark corpus: photo-like images generated deterministically into ``bench/.corpus/``, once.

Each image mixes smooth blobs (light and shade), mid-scale structure, fine texture, hard-edged
shapes, a colour gradient and sensor-like grain, so decoders and encoders do the work a photograph
asks of them (a flat colour would compress to nothing and decode in no time). Every random field
is libvips' ``gaussnoise`` with a fixed seed, so the same version of this file and of libvips
writes the same pixels. Bump ``VERSION`` when the recipe changes: the corpus is then regenerated.

``python -m bench.corpus`` generates it (if needed) and prints what it holds.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyvips

VERSION = 1
ROOT = Path(__file__).resolve().parent / ".corpus"
MANIFEST = ROOT / "manifest.json"


@dataclass(frozen=True)
class Subset:
    key: str
    title: str
    width: int
    height: int
    suffix: str  # libvips save suffix, also the file extension
    count: int
    save_options: dict[str, Any]


# Counts keep a whole `make bench` within a few minutes on 2 cores; the timed loops cycle through
# a subset as often as their time allows, so more files would add generation time, not precision.
SUBSETS = (
    # camera-like JPEG: quality 90, 4:2:0 chroma as phones write it
    Subset("jpeg12mp", "12 MP JPEG", 4000, 3000, "jpg", 8, {"Q": 90, "subsample_mode": "on"}),
    Subset("jpeg1080", "1080p JPEG", 1920, 1080, "jpg", 16, {"Q": 90, "subsample_mode": "on"}),
    Subset("png1080", "1080p PNG", 1920, 1080, "png", 8, {"compression": 6}),
    Subset("webp1080", "1080p WebP", 1920, 1080, "webp", 16, {"Q": 85}),
)
# imgproxy's published benchmark's sources (~2K photos), for bench.peers only: the engine and
# end-to-end parts keep to SUBSETS
PHOTOS_2K = Subset("jpeg2k", "2K JPEG", 2040, 1356, "jpg", 8, {"Q": 90, "subsample_mode": "on"})
GENERATED = (*SUBSETS, PHOTOS_2K)


@dataclass(frozen=True)
class Image:
    subset: str
    path: Path
    width: int
    height: int
    bytes: int


def _field(width: int, height: int, cell: int, seed: int) -> pyvips.Image:
    """Smooth Gaussian noise with features about ``cell`` pixels across (mean 0, sd about 1)."""
    small = pyvips.Image.gaussnoise(width // cell + 4, height // cell + 4, sigma=1.0, mean=0.0, seed=seed)
    return small.resize(cell, kernel="cubic").extract_area(cell, cell, width, height)


def photo(width: int, height: int, seed: int) -> pyvips.Image:
    """A deterministic photo-like 8-bit sRGB image."""
    rng = random.Random(seed)
    side = max(width, height)
    big = _field(width, height, side // rng.randint(4, 8), seed * 16 + 1)
    mid = _field(width, height, side // rng.randint(30, 60), seed * 16 + 2)
    fine = _field(width, height, rng.randint(3, 8), seed * 16 + 3)
    edges = _field(width, height, side // rng.randint(15, 35), seed * 16 + 4)
    shapes = (edges > rng.uniform(0.2, 0.6)).ifthenelse(1.0, 0.0).gaussblur(rng.uniform(0.6, 1.5))
    grain = pyvips.Image.gaussnoise(width, height, sigma=1.0, mean=0.0, seed=seed * 16 + 5)
    xyz = pyvips.Image.xyz(width, height)
    x, y = xyz[0] / width - 0.5, xyz[1] / height - 0.5
    bands = []
    for _ in range(3):
        band = (
            rng.uniform(110, 150)
            + rng.uniform(25, 45) * big
            + rng.uniform(15, 30) * mid
            + rng.uniform(6, 12) * fine
            + rng.uniform(-50, 50) * shapes
            + rng.uniform(2.5, 4.5) * grain
            + rng.uniform(-60, 60) * x
            + rng.uniform(-60, 90) * y
        )
        bands.append(band)
    image = bands[0].bandjoin(bands[1:]).cast("uchar")
    return image.copy(interpretation="srgb")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _generate() -> None:
    ROOT.mkdir(parents=True, exist_ok=True)
    entries = []
    started = time.perf_counter()
    for n, subset in enumerate(GENERATED):
        for i in range(subset.count):
            path = ROOT / f"{subset.key}-{i:02d}.{subset.suffix}"
            image = photo(subset.width, subset.height, seed=1000 * (n + 1) + i)
            image.write_to_file(str(path), **subset.save_options)
            entries.append(
                {"subset": subset.key, "file": path.name, "width": subset.width, "height": subset.height}
            )
    for entry in entries:
        path = ROOT / str(entry["file"])
        entry["bytes"] = path.stat().st_size
        entry["sha256"] = _sha256(path)
    manifest = {"version": VERSION, "libvips": libvips_version(), "images": entries}
    MANIFEST.write_text(json.dumps(manifest, indent=1))
    print(f"corpus: generated {len(entries)} images in {time.perf_counter() - started:.0f} s into {ROOT}")


def libvips_version() -> str:
    return f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}"


def _current() -> bool:
    if not MANIFEST.exists():
        return False
    try:
        manifest = json.loads(MANIFEST.read_text())
    except ValueError:
        return False
    if manifest.get("version") != VERSION:
        return False
    wanted = sum(s.count for s in GENERATED)
    images = manifest.get("images", [])
    return len(images) == wanted and all(
        (ROOT / e["file"]).is_file() and (ROOT / e["file"]).stat().st_size == e["bytes"] for e in images
    )


def ensure() -> None:
    """Generate the corpus unless an up-to-date one is there already."""
    if not _current():
        _generate()


def images(subset: str | None = None) -> list[Image]:
    """The images of ``subset``; without one, those of every subset in ``SUBSETS``."""
    wanted = {subset} if subset is not None else {s.key for s in SUBSETS}
    manifest = json.loads(MANIFEST.read_text())
    return [
        Image(e["subset"], ROOT / e["file"], e["width"], e["height"], e["bytes"])
        for e in manifest["images"]
        if e["subset"] in wanted
    ]


def subset(key: str) -> Subset:
    return next(s for s in GENERATED if s.key == key)


def main() -> None:
    ensure()
    for s in GENERATED:
        files = images(s.key)
        mean_mb = sum(f.bytes for f in files) / len(files) / 1e6
        print(f"corpus: {s.title:11s} {len(files):3d} x {s.width}x{s.height}, mean {mean_mb:.2f} MB")


if __name__ == "__main__":
    main()
