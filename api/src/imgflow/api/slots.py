"""Upload slots: how many uploads one API process receives at once, in all and from one key.

An upload holds a connection and up to its size limit of /tmp for as long as its client takes to
send it (within the body's time limits). A replica receives ``max_concurrent_uploads`` at once
(503 past it: another replica may have room); one key gets at most ``max_uploads_per_key`` of
them (429 past it: that key is the one to slow down), so a client sending slowly cannot take every
slot from the other tenants. Admin keys are not counted per key, as they are not rate-limited;
with auth off there is no key to count by.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from imgflow.api.auth import Principal
from imgflow.api.problems import Problem
from imgflow.api.state import AppState


@contextlib.asynccontextmanager
async def upload_slot(state: AppState, principal: Principal) -> AsyncIterator[None]:
    """Hold one of the replica's upload slots, and one of the key's, while the block runs."""
    settings = state.settings
    if state.uploads.locked():
        raise Problem(
            503,
            "Too many uploads",
            f"This server is receiving {settings.max_concurrent_uploads} uploads already. Retry shortly.",
            headers={"Retry-After": "2"},
        )
    key = None if principal.admin else principal.key_id
    held = state.uploads_by_key
    if key is not None and held[key] >= settings.max_uploads_per_key:
        raise Problem(
            429,
            "Too many uploads",
            f"This server is receiving {settings.max_uploads_per_key} uploads from this key already, "
            "the most one key may send at once; send the next when one has been answered.",
            headers={"Retry-After": "2"},
        )
    if key is not None:
        held[key] += 1
    try:
        async with state.uploads:
            yield
    finally:
        if key is not None:
            held[key] -= 1
            if not held[key]:
                del held[key]
