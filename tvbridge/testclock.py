"""Test-only: start the wall clock of a `tvbridge serve` process at a chosen moment.

`TVBRIDGE_TEST_NOW=<ISO-8601 moment with its offset>` in a test server's environment makes the app's wall clock
(`keys.NOW`: exchange sessions, the closed-market queue, the daily risk count, the status page) start at that
moment and run on at the machine's pace. A subprocess test can so stand on a chosen exchange day (a Monday
open, a holiday, the minutes around IST midnight) instead of the day the suite happens to run on; in-process
tests pass `create_app(clock=...)` instead. Unset (always, in production) the machine's clock is used. This
is the only place the variable is read; it is documented in `docs/durability.md`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

VARIABLE: Final = "TVBRIDGE_TEST_NOW"


def machine_now() -> datetime:
    return datetime.now(UTC)


def wall_clock(env: Mapping[str, str]) -> Callable[[], datetime]:
    """The machine's clock, or the one `TVBRIDGE_TEST_NOW` asks for. Raises `ValueError` for a moment that is
    not ISO-8601 with an offset (a naive time would be read in the machine's zone: a wrong exchange day)."""
    setting = env.get(VARIABLE, "")
    if not setting:
        return machine_now
    start = datetime.fromisoformat(setting)
    if start.tzinfo is None:
        raise ValueError(f"{VARIABLE} needs an offset (e.g. +05:30 or Z), got {setting!r}")
    started = time.monotonic()

    def now() -> datetime:
        return start + timedelta(seconds=time.monotonic() - started)

    return now
