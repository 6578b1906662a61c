"""The alert parser: what a trader's alert becomes, and what they read when it is wrong."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from helpers import alert, leg

from tvbridge.errors import BadRequestError, InvalidAlertError
from tvbridge.models import CancelAlert, Instrument, OptionType, OrderAlert, OrderLeg, OrderType, Product, Side
from tvbridge.parsing import decode_body, make_converter, parse_alert, unknown_keys

CONVERTER = make_converter()


def order_legs(raw: dict[str, Any]) -> tuple[OrderLeg, ...]:
    parsed = parse_alert(raw, CONVERTER)
    assert isinstance(parsed, OrderAlert)
    return parsed.legs


def errors_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidAlertError) as caught:
        parse_alert(raw, CONVERTER)
    return caught.value.errors


def test_guide_payload_parses_into_domain_types() -> None:
    """The guide's own example (all strings) becomes typed fields: side, Decimal price, int quantity."""
    parsed = parse_alert(alert(), CONVERTER)
    assert isinstance(parsed, OrderAlert)
    (only,) = parsed.legs
    assert only.side is Side.BUY
    assert only.order_type is OrderType.MARKET
    assert only.quantity == 10
    assert only.product is Product.CNC
    assert only.price == Decimal(0)
    assert only.meta is not None
    assert only.meta.timenow is not None


def test_natural_json_types_are_accepted_too() -> None:
    """Numbers may come as JSON numbers instead of strings."""
    (only,) = order_legs(alert(leg(quantity=5, price=101.5, sort_order=1)))
    assert only.quantity == 5
    assert only.price == Decimal("101.5")


def test_dhan_panel_option_format() -> None:
    """Dhan's panel sends instrument OPT with option_type, strike_price and expiry_date."""
    raw = alert(
        leg(
            exchange="NFO",
            symbol="NIFTY",
            instrument="OPT",
            option_type="CE",
            strike_price="24500",
            expiry_date="2026-12-31",
            productType="M",
            quantity="75",
        )
    )
    (option,) = order_legs(raw)
    assert option.instrument is Instrument.OPTION
    assert option.option_type is OptionType.CALL
    assert option.strike_price == Decimal(24500)
    assert option.expiry_date == date(2026, 12, 31)


def test_guide_ce_with_strike_and_expiry_is_an_option() -> None:
    """The guide's instrument CE is folded into OPT + option_type CE."""
    raw = alert(leg(exchange="NFO", symbol="NIFTY", instrument="PE", strike_price="24000", expiry_date="2026-12-31"))
    (option,) = order_legs(raw)
    assert option.instrument is Instrument.OPTION
    assert option.option_type is OptionType.PUT


def test_ce_without_strike_and_expiry_is_refused_not_guessed() -> None:
    """The nearest expiry is never guessed: both fields are named."""
    errors = errors_of(alert(leg(exchange="NFO", symbol="NIFTY", instrument="CE")))
    assert "order_legs[0].strike_price: is required for options (the nearest expiry is not guessed)" in errors
    assert "order_legs[0].expiry_date: is required for options (the nearest expiry is not guessed)" in errors


def test_every_problem_is_listed_at_once_with_its_path() -> None:
    """A broken alert gets one line per problem, with the path as the trader wrote it."""
    raw = alert(
        leg(transactionType="X", quantity="1.5", symbol="{{ticker}}"),
        {"transactionType": "B"},
        alert_type="bogus",
    )
    errors = errors_of(raw)
    assert "alertType: must be one of multi_leg_order, single_order, cancel_order, got 'bogus'" in errors
    assert "order_legs[0].transactionType: must be one of B, S, got 'X'" in errors
    assert "order_legs[0].quantity: must be a whole number, got '1.5'" in errors
    assert (
        "order_legs[0].symbol: unreplaced TradingView placeholder {{ticker}}: TradingView did not fill it in" in errors
    )
    assert "order_legs[1].orderType: required field missing" in errors
    assert "order_legs[1].productType: required field missing" in errors


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"quantity": "0"}, "order_legs[0].quantity: must be a positive whole number, got 0"),
        ({"quantity": "-3"}, "order_legs[0].quantity: must be a positive whole number, got -3"),
        ({"orderType": "LMT", "price": "0"}, "order_legs[0].price: must be > 0 for orderType LMT"),
        ({"orderType": "SL", "price": "100"}, "order_legs[0].triggerPrice: is required (> 0) for orderType SL"),
        ({"orderType": "SL-M"}, "order_legs[0].triggerPrice: is required (> 0) for orderType SL-M"),
        ({"exchange": "NYSE"}, "order_legs[0].exchange: must be one of NSE, BSE, NFO, BFO, MCX, got 'NYSE'"),
        ({"instrument": "BOND"}, "order_legs[0].instrument: must be one of EQ, FUT, OPT, CE, PE, got 'BOND'"),
        ({"price": "abc"}, "order_legs[0].price: must be a number, got 'abc'"),
        (
            {"meta": {"timenow": "{{timenow}}"}},
            "order_legs[0].meta.timenow: unreplaced TradingView placeholder {{timenow}}: TradingView did not fill it in",
        ),
    ],
)
def test_leg_rules(overrides: dict[str, Any], expected: str) -> None:
    """Each leg rule names the field to fix."""
    assert expected in errors_of(alert(leg(**overrides)))


def test_single_order_takes_exactly_one_leg() -> None:
    errors = errors_of(alert(leg(), leg(), alert_type="single_order"))
    assert errors == ["order_legs: single_order takes exactly one leg, got 2"]


def test_empty_legs_are_refused() -> None:
    assert errors_of({"secret": "s", "alertType": "multi_leg_order", "order_legs": []}) == [
        "order_legs: must hold at least one leg"
    ]


def test_legs_are_sorted_by_sort_order() -> None:
    """Legs run in sort_order, whatever their order in the list."""
    parsed = parse_alert(alert(leg(symbol="SECOND", sort_order="2"), leg(symbol="FIRST", sort_order="1")), CONVERTER)
    assert [x.symbol for x in parsed.legs] == ["FIRST", "SECOND"]


def test_unknown_keys_become_warnings_with_a_hint() -> None:
    """A typo is visible: the key is reported back, with the closest known key."""
    raw = alert(leg(triggerprice="101"), strategy="s1")
    parse_alert(raw, CONVERTER)
    assert unknown_keys(raw) == [
        "strategy: unknown key, ignored",
        "order_legs[0].triggerprice: unknown key, ignored (did you mean triggerPrice?)",
    ]


def test_root_id_is_the_alert_key() -> None:
    assert parse_alert(alert(id="bar-42"), CONVERTER).key == "bar-42"
    assert parse_alert(alert(idempotency_key="k-1"), CONVERTER).key == "k-1"


def test_cancel_order_needs_only_a_symbol_or_order_id() -> None:
    parsed = parse_alert(alert({"symbol": "INFY", "transactionType": "S"}, alert_type="cancel_order"), CONVERTER)
    assert isinstance(parsed, CancelAlert)
    assert parsed.legs[0].symbol == "INFY"
    assert errors_of(alert({"exchange": "NSE"}, alert_type="cancel_order")) == [
        "order_legs[0].symbol: give a symbol or an order_id"
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "body is not JSON: the body is empty"),
        (b"BUY RELIANCE", "body is not JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"[1, 2]", "body must be a JSON object (the alert), got a list"),
        (b"42", "body must be a JSON object (the alert), got 42"),
        (b'{"symbol": "\xc3\x28"}', "body is not JSON: it is not UTF-8 text"),
    ],
)
def test_bodies_that_are_not_an_object(body: bytes, message: str) -> None:
    with pytest.raises(BadRequestError) as caught:
        decode_body(body)
    assert str(caught.value) == message
