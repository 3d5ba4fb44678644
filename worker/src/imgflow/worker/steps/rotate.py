"""Apply the EXIF orientation, so the thumbnail is upright without any metadata.

Runs on the small, resized image: a rotation needs random access, which a source opened for
sequential decoding cannot give, and copying a thumbnail to memory is cheap.
"""

from __future__ import annotations

from imgflow.worker.work import Work


def autorotate(work: Work) -> Work:
    if work.orientation in (0, 1):
        return work
    return work.with_image(work.image.copy_memory().autorot(), orientation=1)
