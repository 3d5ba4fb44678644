"""Failed authentications per client address, counted in this process (imgflow.api.deps).

Each address that failed has a token bucket of ``burst`` tries refilled at ``per_s``. Past it,
its failures answer 429, and a key id this process has not seen authenticate is refused without
a lookup: made-up ids then cost the database nothing. Ids that did authenticate here are still
looked up, so a real key sharing the address (a NAT, a proxy that does not forward the client's
address) keeps working. Both tables are bounded: made-up keys from many addresses cannot grow
them without end.
"""

from __future__ import annotations

import time
from typing import TypeVar

V = TypeVar("V")
MAX_ENTRIES = 10_000  # of each table; beyond, the oldest go


class AuthThrottle:
    def __init__(self, per_s: float, burst: int) -> None:
        self._per_s = per_s
        self._burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tries left, when)
        self._known: dict[str, None] = {}  # ids of keys that authenticated here, oldest first

    def _left(self, address: str, now: float) -> float:
        left, then = self._buckets.get(address, (self._burst, now))
        return min(self._burst, left + (now - then) * self._per_s)

    def retry_after(self, address: str) -> float:
        """Seconds until ``address`` has a try again; 0: it has one now."""
        left = self._left(address, time.monotonic())
        return 0.0 if left >= 1 else (1 - left) / self._per_s

    def may_look_up(self, address: str, key_id: str) -> bool:
        return key_id in self._known or not self.retry_after(address)

    def succeeded(self, key_id: str) -> None:
        _put(self._known, key_id, None)

    def failed(self, address: str) -> float:
        """Count a failure: 0 if ``address`` had a try for it, else the seconds until it has."""
        now = time.monotonic()
        left = self._left(address, now)
        if len(self._buckets) >= MAX_ENTRIES:  # the addresses whose allowance refilled go first
            self._buckets = {a: b for a, b in self._buckets.items() if self._left(a, now) < self._burst}
        _put(self._buckets, address, (max(0.0, left - 1), now))
        return 0.0 if left >= 1 else (1 - left) / self._per_s


def _put(table: dict[str, V], key: str, value: V) -> None:
    """Set ``key`` last in ``table`` (its order is the entries' age), the oldest dropped past
    ``MAX_ENTRIES``."""
    table.pop(key, None)
    while len(table) >= MAX_ENTRIES:
        del table[next(iter(table))]
    table[key] = value
