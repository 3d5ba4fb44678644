"""Places one API process gives out, in all and per key: uploads, live-progress streams, downloads.

Each of these holds a connection and memory or /tmp for as long as its client takes (within the
body's, stream's or download's time limits), so a replica gives out a bounded number of each, and
one key gets at most a share of them: a client that sends or reads slowly, or opens many, cannot
take every place from the other tenants. A full process answers ``full_status`` (503 where another
replica may have room); a key at its share answers 429 (that key is the one to slow down). Callers
pass ``None`` as the key for what is not counted per key (admin keys, which are not rate-limited
either, or auth off).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

from imgflow.api.problems import Problem

if TYPE_CHECKING:  # deps imports this module
    from imgflow.api.deps import AppState, Principal


class Slots:
    def __init__(self, what: str, total: int, per_key: int, *, full_status: int, advice: str) -> None:
        self.what, self._total, self._per_key = what, total, per_key
        self._full_status, self._advice = full_status, advice
        self._held: Counter[str | None] = Counter()

    def refusal(self, key_id: str | None) -> Problem | None:
        """The problem a new place for ``key_id`` gets now, or None if there is room."""
        if self._held.total() >= self._total:
            status, detail = self._full_status, f"This server has {self._total} {self.what} already"
        elif key_id is not None and self._held[key_id] >= self._per_key:
            status = 429
            detail = (
                f"{self._per_key} {self.what} of this key are under way on this server already, "
                "the most one key may have at once"
            )
        else:
            return None
        return Problem(
            status, f"Too many {self.what}", f"{detail}; {self._advice}", headers={"Retry-After": "2"}
        )

    @contextlib.contextmanager
    def hold(self, key_id: str | None) -> Iterator[bool]:
        """A place for the block; yields False (and takes none) if there is none left."""
        if self.refusal(key_id) is not None:
            yield False
            return
        self._held[key_id] += 1
        try:
            yield True
        finally:
            self._held[key_id] -= 1
            if not self._held[key_id]:
                del self._held[key_id]  # keys that come and go leave nothing behind

    @contextlib.contextmanager
    def take(self, key_id: str | None) -> Iterator[None]:
        """A place for the block, or the refusal raised."""
        refused = self.refusal(key_id)
        if refused is not None:
            raise refused
        with self.hold(key_id):
            yield


def counted(principal: Principal) -> str | None:
    """The key whose share a place takes: none for admin keys or with auth off."""
    return None if principal.admin else principal.key_id


@contextlib.asynccontextmanager
async def upload_slot(state: AppState, principal: Principal) -> AsyncIterator[None]:
    """One of the process's upload places, and of the key's, while the upload is received."""
    with state.uploads.take(counted(principal)):
        yield
