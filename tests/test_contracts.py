"""Choosing the contract of a relative strike or expiry (`tvbridge/contracts.py`): pure rules, exchange time."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pytest

from tvbridge.broker import BrokerRejectedError
from tvbridge.contracts import choose_expiry, choose_strike
from tvbridge.models import ExpiryRef, OptionType
from tvbridge.sessions import EXCHANGE_TZ, Calendar

GRID = [Decimal(s) for s in range(23800, 24201, 50)]
EXPIRIES = [date(2026, 11, 24), date(2026, 12, 1), date(2026, 12, 8), date(2026, 12, 29), date(2027, 1, 5)]


@pytest.mark.parametrize(
    ("price", "offset", "kind", "expected"),
    [
        ("24025", 0, OptionType.CALL, "24000"),  # a tie goes to the lower strike
        ("24025.01", 0, OptionType.CALL, "24050"),
        ("24000", 1, OptionType.CALL, "24050"),
        ("24000", 1, OptionType.PUT, "23950"),
        ("24000", -2, OptionType.PUT, "24100"),
        ("23790", 0, OptionType.CALL, "23800"),  # within one step below the grid
    ],
)
def test_atm_and_steps_out_of_the_money(price: str, offset: int, kind: OptionType, expected: str) -> None:
    """ATM is the nearest listed strike; +N is out of the money (up for CE, down for PE)."""
    assert choose_strike(GRID, Decimal(price), offset, kind, "NIFTY") == Decimal(expected)


def test_a_price_outside_the_grid_is_refused() -> None:
    """An underlying price far from every listed strike (a wrong chart) is not mapped to the edge strike."""
    with pytest.raises(BrokerRejectedError, match=r"underlying_price 25000 is outside the listed strikes"):
        choose_strike(GRID, Decimal(25000), 0, OptionType.CALL, "NIFTY CE on 2026-12-08")


@pytest.mark.parametrize(
    ("moment", "ref", "expected"),
    [
        (datetime(2026, 12, 1, 15, 29, tzinfo=EXCHANGE_TZ), ExpiryRef.CURRENT_WEEK, date(2026, 12, 1)),
        (datetime(2026, 12, 1, 15, 30, tzinfo=EXCHANGE_TZ), ExpiryRef.CURRENT_WEEK, date(2026, 12, 8)),
        (datetime(2026, 12, 1, 15, 30, tzinfo=EXCHANGE_TZ), ExpiryRef.NEXT_WEEK, date(2026, 12, 29)),
        (datetime(2026, 11, 24, 10, 0, tzinfo=EXCHANGE_TZ), ExpiryRef.CURRENT_MONTH, date(2026, 11, 24)),
        (datetime(2026, 11, 24, 16, 0, tzinfo=EXCHANGE_TZ), ExpiryRef.CURRENT_MONTH, date(2026, 12, 29)),
        (datetime(2026, 11, 24, 16, 0, tzinfo=EXCHANGE_TZ), ExpiryRef.NEXT_MONTH, date(2027, 1, 5)),
    ],
)
def test_expiries_by_name_in_exchange_time(moment: datetime, ref: ExpiryRef, expected: date) -> None:
    """An expiry day is current until the NSE close; a month's expiry is its last listed one."""
    assert choose_expiry(EXPIRIES, ref, now=moment, exchange="NFO", calendar=Calendar()) == expected


def test_mcx_expiries_run_until_the_evening_close() -> None:
    """On MCX an expiry day's contract is still current at 18:00 IST (MCX trades until the evening)."""
    moment = datetime(2026, 12, 1, 18, 0, tzinfo=EXCHANGE_TZ)
    found = choose_expiry(EXPIRIES, ExpiryRef.CURRENT_WEEK, now=moment, exchange="MCX", calendar=Calendar())
    assert found == date(2026, 12, 1)
