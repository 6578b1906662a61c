"""Which dedupe keys the SQLite journal may have recorded lately: "never" without a query (issue 22).

Every alert's dedupe guard asks the journal whether its key was recorded within `dedupe.window_s`
(`Journal.find_by_dedupe_key`): one indexed SELECT per alert, and nearly always the answer is "no". One process
owns the journal's file, and every key it records passes through `Journal.record_plan`, so a filter of the
keys recorded (and, at start, of the keys already in the file) answers "never recorded" for certain; "maybe"
still asks the journal, which has the last word. A repeat is therefore never missed: a key is added before its
alert's transaction is even queued, and a false "maybe" only costs the query that every alert used to make.

Bounded memory: two generations of a fixed bit array (`BITS` bits each, `HASHES` bits per key from its hash).
The current one takes the new keys; when a query's `since` (the window's start, ISO UTC like `received_at`) has
passed the moment the current generation began, every key of the previous generation is older than any window
to come: it is dropped, the current one becomes the previous one, and a new one starts. So memory is 2 x
`BITS` / 8 bytes however many alerts arrive; a window that holds more keys than the bits were sized for only
makes "maybe" (a query) more frequent. A wall clock stepped back by more than the window could make a dropped
key's alert look new while the journal's own query still finds it; the SELECT compares the same timestamps.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final

BITS: Final = 1 << 23
"""Bits per generation (1 MiB). With `HASHES` bits per key, ~0.0005% false "maybe" with 120,000 keys in each
generation (2,000 alerts/s over the default 60-second window), measured; it was ~0.07% with two bits."""
HASHES: Final = 4
"""Bits set per key. A false "maybe" costs the journal's indexed query that a key never recorded would otherwise
skip (`tvbridge/journal.py`)."""
_MASK: Final = BITS - 1


class RecentKeys:
    """See the module docstring. Python's `hash()` of a str is fixed for the process's life, which is all this
    in-memory filter needs."""

    def __init__(self) -> None:
        self._current = bytearray(BITS // 8)
        self._previous = bytearray(BITS // 8)
        self._current_since = datetime.now(UTC).isoformat()
        """When the current generation began (ISO UTC): every key in the previous one is older."""

    def add(self, key: str) -> None:
        for bit in _bits(key):
            self._current[bit >> 3] |= 1 << (bit & 7)

    def maybe_since(self, key: str, since: str) -> bool:
        """False: `key` was certainly not recorded at or after `since` (ISO UTC) by this process or found in the
        file at start. True: it may have been; ask the journal."""
        if since > self._current_since:  # the previous generation is out of every window from now on
            self._previous, self._current = self._current, bytearray(BITS // 8)
            self._current_since = datetime.now(UTC).isoformat()
        a, b, c, d = _bits(key)
        for generation in (self._current, self._previous):
            if (
                generation[a >> 3] & (1 << (a & 7))
                and generation[b >> 3] & (1 << (b & 7))
                and generation[c >> 3] & (1 << (c & 7))
                and generation[d >> 3] & (1 << (d & 7))
            ):
                return True
        return False


def _bits(key: str) -> tuple[int, int, int, int]:
    """The key's `HASHES` bits, from its one 64-bit `hash()` (cached on the string) by double hashing."""
    h = hash(key)
    first, step = h & 0xFFFFFFFF, (h >> 32) | 1
    return (first & _MASK, (first + step) & _MASK, (first + 2 * step) & _MASK, (first + 3 * step) & _MASK)
