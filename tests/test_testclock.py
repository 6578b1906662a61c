"""The test-only start clock (`TVBRIDGE_TEST_NOW`): unset it is the machine's; set it starts at the moment given."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tvbridge.testclock import machine_now, wall_clock


def test_unset_is_the_machines_clock() -> None:
    """Without the variable (production) the clock is the machine's, in UTC."""
    assert wall_clock({}) is machine_now
    assert abs(machine_now() - datetime.now(UTC)) < timedelta(seconds=5)


def test_set_starts_at_the_moment_and_runs_on() -> None:
    """The clock starts at the given moment (its offset kept) and never goes back."""
    clock = wall_clock({"TVBRIDGE_TEST_NOW": "2026-11-26T00:10:00+05:30"})
    first, second = clock(), clock()
    start = datetime.fromisoformat("2026-11-26T00:10:00+05:30")
    assert start <= first <= second < start + timedelta(minutes=1)
    assert first.utcoffset() == timedelta(hours=5, minutes=30)


def test_a_moment_without_offset_is_refused() -> None:
    """A naive moment would be read in the machine's zone (a wrong exchange day): refused, naming the variable."""
    with pytest.raises(ValueError, match="TVBRIDGE_TEST_NOW needs an offset"):
        wall_clock({"TVBRIDGE_TEST_NOW": "2026-11-26T00:10:00"})
