"""Exchange calendars: when NSE, BSE, their F&O segments and MCX are open, in exchange time (Asia/Kolkata).

Pure: every answer is a function of the moment asked about (an aware datetime from the injected clock, never the
machine's) and the config. What it knows:

* NSE, BSE, NFO, BFO: pre-open 09:00-09:08, normal session 09:15-15:30, Monday to Friday.
* MCX: 09:00-23:30, or 23:55 while the US is on daylight saving time (New York's rules decide).
* Holidays from the `holidays` package's financial calendars: `XNSE` for NSE/NFO, `XBOM` for BSE/BFO. The package
  is maintained against the exchanges' circulars every year, which a hand-typed list in our code would not be.
  MCX has no calendar there; it is taken as closed on NSE's holidays (many of them it opens for the evening
  session only: add such an evening as an `extra_sessions` entry).
* `[sessions] extra_holidays` close every exchange on those dates; `extra_sessions` open the listed exchanges
  for a one-off session (Muhurat trading), even on a weekend or a holiday.

Only the normal session (and extra sessions) count as open for sending orders: an order sent during pre-open
would join the call auction, which an alert written for the continuous market did not ask for.
"""

from __future__ import annotations

import functools
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Final
from zoneinfo import ZoneInfo

import attrs
import holidays

if TYPE_CHECKING:
    from collections.abc import Iterable

    from tvbridge.config import ExtraSession, SessionsConfig

EXCHANGE_TZ: Final = ZoneInfo("Asia/Kolkata")
US_TZ: Final = ZoneInfo("America/New_York")
EXCHANGES: Final = ("NSE", "BSE", "NFO", "BFO", "MCX")
EQUITY_HOURS: Final = (time(9, 15), time(15, 30))
PRE_OPEN: Final = (time(9, 0), time(9, 8))
MCX_OPEN: Final = time(9, 0)
MCX_CLOSE: Final = time(23, 30)
MCX_CLOSE_US_DST: Final = time(23, 55)
HOLIDAY_CALENDAR: Final = {"NSE": "XNSE", "NFO": "XNSE", "MCX": "XNSE", "BSE": "XBOM", "BFO": "XBOM"}
SEARCH_DAYS: Final = 31
"""How far ahead the next open is looked for (no Indian exchange closes for a month)."""


@attrs.frozen(kw_only=True)
class Session:
    start: datetime
    end: datetime
    name: str = "normal session"


@attrs.frozen(kw_only=True)
class MarketStatus:
    """One exchange at one moment, as `GET /market` shows it."""

    exchange: str
    open: bool
    phase: str
    """`open`, `pre-open` or `closed`."""
    reason: str
    next_open: datetime | None
    closes_at: datetime | None = None


@functools.cache
def _financial(market: str) -> holidays.HolidayBase:
    return holidays.financial_holidays(market)


def _clock_time(day: date, at: time) -> datetime:
    return datetime.combine(day, at, tzinfo=EXCHANGE_TZ)


def _hhmm(text: str) -> time:
    hours, minutes = text.split(":")
    return time(int(hours), int(minutes))


class Calendar:
    """Sessions per exchange and day, with the config's extra holidays and sessions."""

    def __init__(self, *, extra_holidays: Iterable[date] = (), extra_sessions: Iterable[ExtraSession] = ()) -> None:
        self._extra_holidays = frozenset(extra_holidays)
        self._extra_sessions = tuple(extra_sessions)

    @classmethod
    def from_config(cls, config: SessionsConfig) -> Calendar:
        return cls(extra_holidays=config.extra_holidays, extra_sessions=config.extra_sessions)

    def closed_reason(self, exchange: str, day: date) -> str | None:
        """Why the exchange has no normal session on `day` (weekend, holiday), or None on a trading day."""
        if day in self._extra_holidays:
            return "holiday (extra_holidays in config)"
        if day.weekday() >= 5:
            return f"weekend ({day:%A})"
        name = _financial(HOLIDAY_CALENDAR[exchange]).get(day)
        if name:
            return f"holiday ({name})"
        return None

    def sessions_on(self, exchange: str, day: date) -> list[Session]:
        """The day's sessions in which orders are sent, in order (pre-open is not one of them)."""
        found: list[Session] = []
        if self.closed_reason(exchange, day) is None:
            if exchange == "MCX":
                noon_us = datetime.combine(day, time(12), tzinfo=US_TZ)
                close = MCX_CLOSE_US_DST if noon_us.dst() else MCX_CLOSE
                found.append(Session(start=_clock_time(day, MCX_OPEN), end=_clock_time(day, close)))
            else:
                found.append(Session(start=_clock_time(day, EQUITY_HOURS[0]), end=_clock_time(day, EQUITY_HOURS[1])))
        found.extend(
            Session(start=_clock_time(day, _hhmm(s.open)), end=_clock_time(day, _hhmm(s.close)), name=s.name)
            for s in self._extra_sessions
            if s.date == day and exchange in s.exchanges
        )
        return sorted(found, key=lambda s: s.start)

    def session_at(self, exchange: str, at: datetime) -> Session | None:
        local = at.astimezone(EXCHANGE_TZ)
        for session in self.sessions_on(exchange, local.date()):
            if session.start <= local < session.end:
                return session
        return None

    def is_open(self, exchange: str, at: datetime) -> bool:
        return self.session_at(exchange, at) is not None

    def next_open(self, exchange: str, at: datetime) -> datetime | None:
        """`at` itself when open, else the start of the next session (None if none within a month)."""
        if self.is_open(exchange, at):
            return at
        local = at.astimezone(EXCHANGE_TZ)
        for offset in range(SEARCH_DAYS + 1):
            for session in self.sessions_on(exchange, local.date() + timedelta(days=offset)):
                if session.start > local:
                    return session.start
        return None

    def last_close(self, exchange: str, at: datetime) -> datetime | None:
        """The end of the latest session that ended at or before `at` (within a month)."""
        local = at.astimezone(EXCHANGE_TZ)
        for offset in range(SEARCH_DAYS + 1):
            ends = [s.end for s in self.sessions_on(exchange, local.date() - timedelta(days=offset)) if s.end <= local]
            if ends:
                return max(ends)
        return None

    def all_open_from(self, exchanges: Iterable[str], at: datetime) -> datetime | None:
        """The first moment at or after `at` when every one of `exchanges` is open (a multi-leg alert's time)."""
        wanted = sorted(set(exchanges))
        moment: datetime | None = at
        for _ in range(SEARCH_DAYS * 4):
            if moment is None:
                return None
            starts = [self.next_open(exchange, moment) for exchange in wanted]
            if any(start is None for start in starts):
                return None
            latest = max(start for start in starts if start is not None)
            if all(self.is_open(exchange, latest) for exchange in wanted):
                return latest
            moment = latest + timedelta(minutes=1)
        return None

    def status(self, exchange: str, at: datetime) -> MarketStatus:
        local = at.astimezone(EXCHANGE_TZ)
        session = self.session_at(exchange, local)
        if session is not None:
            return MarketStatus(
                exchange=exchange,
                open=True,
                phase="open",
                reason=f"{session.name} until {session.end:%H:%M}",
                next_open=None,
                closes_at=session.end,
            )
        next_open = self.next_open(exchange, local)
        day_closed = self.closed_reason(exchange, local.date())
        if day_closed is not None and not self.sessions_on(exchange, local.date()):
            reason = day_closed
            phase = "closed"
        elif exchange != "MCX" and day_closed is None and PRE_OPEN[0] <= local.time() < EQUITY_HOURS[0]:
            phase = "pre-open" if local.time() < PRE_OPEN[1] else "closed"
            reason = (
                f"pre-open call auction {PRE_OPEN[0]:%H:%M}-{PRE_OPEN[1]:%H:%M}; orders are sent from"
                f" {EQUITY_HOURS[0]:%H:%M}"
                if phase == "pre-open"
                else f"between pre-open and the normal session ({EQUITY_HOURS[0]:%H:%M})"
            )
        elif next_open is not None and next_open.date() == local.date():
            reason, phase = "before the open", "closed"
        else:
            reason, phase = "after the close", "closed"
        return MarketStatus(exchange=exchange, open=False, phase=phase, reason=reason, next_open=next_open)
