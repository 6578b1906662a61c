"""The dedupe look-up without a query (`tvbridge/recentkeys.py`): "never recorded" only when that is certain.

A wrong "never" would run a repeat twice (a double order), so these check the journal's answers for keys
recorded by this process, keys already in the file when it opened, and keys at the edge of the window, against
a real SQLite journal; and that the filter stays two fixed generations (bounded memory) while keys come and go.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest
from helpers import in_time_zone

from tvbridge.alerts.records import AlertEntry
from tvbridge.journal import Journal
from tvbridge.recentkeys import BITS, HASHES, RecentKeys

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


def iso(delta_s: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=delta_s)).isoformat()


def entry(alert_id: str, key: str) -> AlertEntry:
    return AlertEntry(alert_id=alert_id, alert_type="multi_leg_order", payload={}, dedupe_key=key, source=None)


async def test_a_recorded_key_is_found_and_an_unknown_one_is_not(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "tvbridge.sqlite3")
    await journal.open()
    try:
        await journal.record_plan(entry("a1", "body:one"))
        found = await journal.find_by_dedupe_key("body:one", iso(-60))
        assert found is not None
        assert found["alert_id"] == "a1"
        assert await journal.find_by_dedupe_key("body:two", iso(-60)) is None
    finally:
        await journal.close()


async def test_keys_in_the_file_before_it_opened_are_found(tmp_path: Path) -> None:
    """Recorded by an earlier run (or any writer before this one opened the file): a resend after a restart
    is still a repeat."""
    path = tmp_path / "tvbridge.sqlite3"
    first = Journal(path)
    await first.open()
    await first.record_plan(entry("a1", "id:trader-7"))
    await first.close()
    again = Journal(path)
    await again.open()
    try:
        found = await again.find_by_dedupe_key("id:trader-7", iso(-60))
        assert found is not None
        assert found["alert_id"] == "a1"
    finally:
        await again.close()


async def test_a_closed_journal_cannot_answer_even_without_a_query(tmp_path: Path) -> None:
    """The dedupe guard turns this into its 503 "journal unreadable" (tests/middlewares/test_dedupe.py)."""
    journal = Journal(tmp_path / "tvbridge.sqlite3")
    await journal.open()
    await journal.close()
    with pytest.raises(sqlite3.ProgrammingError):
        await journal.find_by_dedupe_key("body:never", iso(-60))


def test_a_key_lives_for_as_long_as_a_window_can_reach_it_then_its_generation_goes() -> None:
    """A key stays "maybe" while any window to come can start before it was added; once a query's window starts
    after the current generation began, the older generation is dropped, and only then. (Windows start in the
    past in real use; a start in the future here stands for time having passed.)"""
    began = iso()
    keys = RecentKeys()
    keys.add("body:old")
    assert keys.maybe_since("body:old", iso(-60))
    assert keys.maybe_since("body:old", began)  # a window starting before the generation began: kept
    before_first = iso()
    assert keys.maybe_since("body:old", iso(1))  # rotates: body:old's generation becomes the previous one
    keys.add("body:new")
    assert keys.maybe_since("body:old", before_first)  # still within reach: no second rotation
    assert keys.maybe_since("body:new", before_first)
    before_second = iso()
    assert not keys.maybe_since("body:old", iso(5))  # rotated again: body:old is out of every window
    assert keys.maybe_since("body:new", before_second)  # the generation that was current is kept
    assert not keys.maybe_since("body:new", iso(10))  # and goes in its turn


def test_never_recorded_keys_are_almost_always_answered_without_the_journal() -> None:
    """The point of it: with a window's worth of keys recorded, a new key is "never" nearly every time."""
    keys = RecentKeys()
    for n in range(100_000):
        keys.add(f"body:{n:064x}")
    since = iso(-60)
    assert all(keys.maybe_since(f"body:{n:064x}", since) for n in range(100_000))
    maybes = sum(keys.maybe_since(f"body:new-{n:060x}", since) for n in range(20_000))
    assert maybes < 20_000 * 0.01
    assert BITS // 8 == 1 << 20  # two such arrays: the whole memory it takes, whatever the rate


@pytest.fixture(params=["America/New_York", "Asia/Kolkata"])
def local_zone(request: pytest.FixtureRequest) -> Iterator[str]:
    """The process's local time zone, west and east of UTC, as on servers outside UTC."""
    with in_time_zone(request.param):
        yield request.param


def test_a_key_stays_within_the_window_whatever_the_local_time_zone(local_zone: str) -> None:
    """The generations turn over by UTC instants, as the journal's timestamps are: on a server west or east of
    UTC a key recorded a moment ago is still "maybe" at every look-up within the window (a wrong "never" there
    would run a repeat)."""
    keys = RecentKeys()
    keys.add("body:recorded")
    for _ in range(3):
        assert keys.maybe_since("body:recorded", iso(-60)), local_zone
    assert keys.maybe_since("body:other", iso(1)) is False  # time passed: a generation turned over
    since = iso()
    keys.add("body:after")
    for _ in range(3):
        assert keys.maybe_since("body:after", since), local_zone
    # and by UTC instants too: two turnovers after it was recorded the key is gone, east of UTC as west (a start
    # taken in local time, hours ahead, kept the first generation, and every key it took, for hours)
    assert keys.maybe_since("body:recorded", iso(5)) is False, local_zone


def test_a_key_never_recorded_rarely_costs_a_query() -> None:
    """With a generation as full as 2,000 alerts/s make it over the default window (120,000 keys), a key never
    recorded is "maybe" (a journal query) fewer than 1 time in 10,000."""
    keys = RecentKeys()
    for n in range(120_000):
        keys.add(f"body:{n:064x}")
    since = iso(-60)
    assert all(keys.maybe_since(f"body:{n:064x}", since) for n in range(0, 120_000, 97))
    false_maybe = sum(keys.maybe_since(f"body:{n:064x}", since) for n in range(120_000, 220_000))
    assert false_maybe < 10, false_maybe


class Hashed(str):
    """A key whose `hash()` is chosen (a str's is random per process), so which bits it sets is known: the number
    after its last `#`."""

    __slots__ = ()

    def __hash__(self) -> int:
        return int(self.rsplit("#", 1)[1])


def key_of(name: str, first: int, step: int) -> Hashed:
    """A key whose `HASHES` bits are `first`, `first + step`, ... (`recentkeys._bits`)."""
    return Hashed(f"body:{name}#{first | (step << 32)}")


@pytest.mark.parametrize("missing", range(HASHES))
def test_a_key_is_maybe_only_when_every_one_of_its_bits_is_set(missing: int) -> None:
    """A key never recorded whose bits other keys set, all but one, is still "never" (no query); once the last
    one is set too it is a false "maybe" (a journal query, never a missed repeat). A look-up that skipped one of
    the bits, or keys that set fewer, would make false "maybe"s several times as frequent at the sized load."""
    key = key_of("never-recorded", 0, 1)  # its bits: 0, 1, 2 and 3
    keys = RecentKeys()
    for bit in range(HASHES):
        if bit != missing:
            keys.add(key_of(f"sets-{bit}", bit, 1001))  # `bit`, and three bits far from 0 to 3
    since = iso(-60)
    assert keys.maybe_since(key, since) is False
    keys.add(key_of("sets-the-last", missing, 1001))
    assert keys.maybe_since(key, since) is True


def test_after_a_turnover_every_key_recorded_is_found() -> None:
    """The generation started at a turnover takes every key as the first one did: a thousand keys recorded after
    it are all "maybe" (none lost, no error on the way)."""
    keys = RecentKeys()
    assert keys.maybe_since("body:other", iso(1)) is False  # time passed: a generation turned over
    since = iso()
    recorded = [f"body:{n:064x}" for n in range(1000)]
    for key in recorded:
        keys.add(key)
    assert all(keys.maybe_since(key, since) for key in recorded)
