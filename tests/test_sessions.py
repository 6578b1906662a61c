"""The exchange calendar on its own: pure answers for given moments, whatever the machine's time zone."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from tvbridge.config import ExtraSession
from tvbridge.sessions import EXCHANGE_TZ, Calendar


def ist(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=EXCHANGE_TZ)


def test_a_utc_moment_is_read_in_exchange_time() -> None:
    """04:00 UTC is 09:30 IST: NSE is open, whatever zone the caller's datetime is in."""
    calendar = Calendar()
    assert calendar.is_open("NSE", datetime(2026, 11, 25, 4, 0, tzinfo=UTC))
    assert not calendar.is_open("NSE", datetime(2026, 11, 25, 10, 5, tzinfo=UTC))  # 15:35 IST


@pytest.mark.parametrize("exchange", ["NSE", "NFO", "BSE", "BFO", "MCX"])
def test_exchange_holidays_close_every_segment(exchange: str) -> None:
    """Holi 2026 (3 March) is a holiday on the NSE (XNSE) and BSE (XBOM) calendars; MCX follows NSE."""
    calendar = Calendar()
    assert calendar.closed_reason(exchange, date(2026, 3, 3)) == "holiday (Holi)"
    assert calendar.sessions_on(exchange, date(2026, 3, 3)) == []


def test_mcx_close_follows_us_daylight_time() -> None:
    """The US leaves daylight time on 1 November 2026: MCX closes at 23:55 on 30 October, 23:30 on 2 November."""
    calendar = Calendar()
    assert [s.end.time().isoformat("minutes") for s in calendar.sessions_on("MCX", date(2026, 10, 30))] == ["23:55"]
    assert [s.end.time().isoformat("minutes") for s in calendar.sessions_on("MCX", date(2026, 11, 2))] == ["23:30"]


def test_next_open_and_last_close_across_a_weekend() -> None:
    """Saturday: the last close was Friday 15:30, the next open is Monday 09:15."""
    calendar = Calendar()
    saturday = ist("2026-11-28T12:00")
    assert calendar.last_close("NSE", saturday) == ist("2026-11-27T15:30")
    assert calendar.next_open("NSE", saturday) == ist("2026-11-30T09:15")


def test_all_open_from_waits_for_every_exchange() -> None:
    """An alert with an NSE and an MCX leg on Sunday can go at Monday 09:15, when both are open."""
    assert Calendar().all_open_from(["NSE", "MCX"], ist("2026-11-29T10:00")) == ist("2026-11-30T09:15")


def test_extra_session_only_for_its_exchanges() -> None:
    """An extra session listed for NSE only does not open MCX."""
    calendar = Calendar(
        extra_sessions=[ExtraSession(date=date(2026, 11, 8), open="18:00", close="19:15", exchanges=("NSE",))]
    )
    assert calendar.is_open("NSE", ist("2026-11-08T18:30"))
    assert not calendar.is_open("MCX", ist("2026-11-08T18:30"))
    assert calendar.next_open("MCX", ist("2026-11-08T18:30")) == ist("2026-11-09T09:00")
