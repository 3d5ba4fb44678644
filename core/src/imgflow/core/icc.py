"""The name an ICC profile gives itself (its ``desc`` tag), read from the profile's bytes as the
header carries them: what a person recognises ("Display P3", "U.S. Web Coated (SWOP) v2").

Only the tag table and the one tag are read, every offset checked against the profile's length:
the bytes come from an upload.
"""

from __future__ import annotations

HEADER_BYTES = 128
TAG_ENTRY_BYTES = 12
MAX_NAME = 200  # characters shown; some profiles carry long notes in their description


def profile_name(profile: bytes) -> str | None:
    """The profile's description (ICC v2 ``desc``, or v4 ``mluc``: its first record), or None
    when it has none that can be read."""
    tag = _tag(profile, b"desc")
    if tag is None:
        return None
    kind = tag[:4]
    if kind == b"desc" and len(tag) >= 12:  # textDescriptionType: a count, then ASCII with its NUL
        count = _uint32(tag, 8)
        text = tag[12 : 12 + count].split(b"\0", 1)[0].decode("latin-1")
    elif kind == b"mluc" and len(tag) >= 28:  # records of language, country, length, offset; UTF-16BE
        length, offset = _uint32(tag, 20), _uint32(tag, 24)
        text = tag[offset : offset + length].decode("utf-16-be", errors="replace")
    else:
        return None
    name = " ".join(text.split())[:MAX_NAME]
    return name or None


def _tag(profile: bytes, signature: bytes) -> bytes | None:
    if len(profile) < HEADER_BYTES + 4:
        return None
    count = _uint32(profile, HEADER_BYTES)
    for index in range(min(count, (len(profile) - HEADER_BYTES - 4) // TAG_ENTRY_BYTES)):
        entry = HEADER_BYTES + 4 + index * TAG_ENTRY_BYTES
        if profile[entry : entry + 4] == signature:
            offset, size = _uint32(profile, entry + 4), _uint32(profile, entry + 8)
            return profile[offset : offset + size] if offset + size <= len(profile) else None
    return None


def _uint32(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + 4], "big")
