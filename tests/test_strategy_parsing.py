"""Parsing strategy-alert keys: targets, relative strikes and expiries, quantity types (`tvbridge/parsing.py`)."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from helpers import alert, leg

from tvbridge.errors import InvalidAlertError
from tvbridge.models import ExpiryRef, MarketPosition, OptionType, OrderAlert, OrderLeg, QuantityType
from tvbridge.parsing import make_converter, parse_alert, unknown_keys

OPTION = {"exchange": "NFO", "symbol": "NIFTY", "instrument": "OPT", "option_type": "CE", "productType": "M"}


def parsed(**fields: Any) -> OrderLeg:
    result = parse_alert(alert(leg(**fields)), make_converter())
    assert isinstance(result, OrderAlert)
    return result.legs[0]


def errors_of(**fields: Any) -> list[str]:
    with pytest.raises(InvalidAlertError) as caught:
        parse_alert(alert(leg(**fields)), make_converter())
    return caught.value.errors


def test_a_target_leg_needs_no_side_or_quantity() -> None:
    """`position_size` alone is a valid leg: Pine's {{strategy.position_size}} may be negative or 10.0."""
    body = leg(position_size="-10.0")
    del body["transactionType"], body["quantity"]
    result = parse_alert(alert(body), make_converter())
    assert isinstance(result, OrderAlert)
    assert result.legs[0].position_size == -10
    assert unknown_keys(alert(body)) == []


def test_market_position_is_read_in_any_case() -> None:
    """`{{strategy.market_position}}` gives lower case; upper case is taken too."""
    found = parsed(market_position="SHORT", market_position_size="5")
    assert (found.market_position, found.market_position_size) == (MarketPosition.SHORT, 5)


def test_relative_strike_and_expiry_are_kept_for_the_executor() -> None:
    """`ATM+2` and `current_week` become a strike offset and an expiry name, with no strike or date yet."""
    found = parsed(**OPTION, strike_price="atm - 1", expiry_date="Current_Week", underlying_price="24012.35")
    assert (found.strike_offset, found.strike_price) == (-1, None)
    assert (found.expiry_ref, found.expiry_date) == (ExpiryRef.CURRENT_WEEK, None)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {**OPTION, "strike_price": "ATM+x", "expiry_date": "2026-12-08", "underlying_price": "1"},
            "order_legs[0].strike_price: must be a number, ATM, ATM+N or ATM-N (N up to 50), got 'ATM+x'",
        ),
        (
            {**OPTION, "strike_price": "ATM", "expiry_date": "2026-12-08"},
            "order_legs[0].underlying_price: is required for a strike relative to ATM ({{close}})",
        ),
        (
            {"instrument": "FUT", "exchange": "NFO", "symbol": "NIFTY", "strike_price": "ATM", "productType": "M"},
            "order_legs[0].strike_price: ATM strikes are for options only, got FUT",
        ),
        (
            {"instrument": "FUT", "exchange": "NFO", "symbol": "NIFTY", "option_type": "PE", "productType": "M"},
            (
                "order_legs[0].option_type: is for options only (instrument OPT, CE or PE), got FUT: remove it, or"
                " trade the option"
            ),
        ),
        (
            {"strike_price": "2900"},
            (
                "order_legs[0].strike_price: is for options only (instrument OPT, CE or PE), got EQ: remove it, or"
                " trade the option"
            ),
        ),
        (
            {"expiry_date": "2026-12-29"},
            "order_legs[0].expiry_date: is for futures and options only, got EQ: remove it",
        ),
        (
            {"expiry_date": "current_week"},
            "order_legs[0].expiry_date: current_week names an expiry: only for instrument FUT or OPT, got EQ",
        ),
        (
            {"quantity_type": "risk", "orderType": "SL", "price": "100", "triggerPrice": "99"},
            (
                "order_legs[0].quantity_type: risk sizing takes triggerPrice as the stop, but on orderType SL it is"
                " the entry trigger: use MKT or LMT with triggerPrice as the stop"
            ),
        ),
        (
            {"quantity_type": "risk", "price": "100"},
            (
                "order_legs[0].triggerPrice: is required for quantity_type risk, different from price (the stop:"
                " risk per unit is the distance)"
            ),
        ),
        (
            {"quantity_type": "capital", "price": "100", "position_size": "5"},
            "order_legs[0].quantity_type: capital does not apply to a target position",
        ),
        (
            {**OPTION, "symbol": "NIFTY261229C24000", "strike_price": "ATM", "underlying_price": "24000"},
            "order_legs[0].strike_price: ATM+0 contradicts the strike 24000 of the option ticker",
        ),
        (
            {"market_position": "long"},
            "order_legs[0].market_position_size: is required with market_position long (the size of the position)",
        ),
    ],
)
def test_bad_strategy_fields_are_named(fields: dict[str, Any], expected: str) -> None:
    """Each problem is a 422 line naming the key the trader has to fix."""
    assert expected in errors_of(**fields)


def test_a_future_keeps_its_expiry_and_an_option_its_fields() -> None:
    """Only an option takes `option_type` and a strike, only a future or an option an expiry: a future with its
    date, and an option given as `CE` with its strike and date, parse with nothing refused."""
    future = parsed(instrument="FUT", exchange="NFO", symbol="NIFTY", productType="M", expiry_date="2026-12-29")
    assert (future.expiry_date, future.option_type, future.strike_price) == (date(2026, 12, 29), None, None)
    call = parsed(**{**OPTION, "instrument": "CE"}, strike_price="24000", expiry_date="2026-12-29")
    assert (call.option_type, call.strike_price, call.expiry_date) == (
        OptionType.CALL,
        Decimal(24000),
        date(2026, 12, 29),
    )


def test_quantity_types_parse() -> None:
    """`percent` is read as percent_of_funds."""
    assert parsed(quantity_type="percent", price="100").quantity_type is QuantityType.PERCENT_OF_FUNDS
