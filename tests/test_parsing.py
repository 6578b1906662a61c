"""The alert parser: what a trader's alert becomes, and what they read when it is wrong."""

from __future__ import annotations

import difflib
import json
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest
from helpers import alert, leg

from tvbridge import parsing
from tvbridge.errors import BadRequestError, InvalidAlertError
from tvbridge.models import CancelAlert, Instrument, OptionType, OrderAlert, OrderLeg, OrderType, Product, Side
from tvbridge.parsing import decode_body, make_converter, parse_alert, unknown_keys


def order_legs(raw: dict[str, Any]) -> tuple[OrderLeg, ...]:
    parsed = parse_alert(raw, make_converter())
    assert isinstance(parsed, OrderAlert)
    return parsed.legs


def errors_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidAlertError) as caught:
        parse_alert(raw, make_converter())
    return caught.value.errors


def test_guide_payload_parses_into_domain_types() -> None:
    """The guide's own example (all strings) becomes typed fields: side, Decimal price, int quantity."""
    parsed = parse_alert(alert(), make_converter())
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
    assert "order_legs[0].strike_price: is required for options (the nearest expiry is not guessed)" in " ".join(errors)
    assert "order_legs[0].expiry_date: is required for options (the nearest expiry is not guessed)" in " ".join(errors)


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


def test_exit_all_may_leave_out_the_quantity_other_legs_may_not() -> None:
    """EXIT_ALL's size is the open position, so its `quantity` may be missing or empty (parsed as 0, "not
    given"); a negative one is still refused, and a plain leg without quantity still names the field."""
    without = leg(manage_position="exit_all")
    del without["quantity"]
    [parsed] = order_legs(alert(without))
    assert (parsed.quantity, parsed.manage_position) == (0, "EXIT_ALL")
    assert order_legs(alert(leg(manage_position="EXIT_ALL", quantity="")))[0].quantity == 0
    assert order_legs(alert(leg(manage_position="EXIT_ALL", quantity="5")))[0].quantity == 5
    assert "order_legs[0].quantity: must be a positive whole number, got -1" in errors_of(
        alert(leg(manage_position="EXIT_ALL", quantity="-1"))
    )
    plain = leg()
    del plain["quantity"]
    assert "order_legs[0].quantity: required field missing" in errors_of(alert(plain))


def test_single_order_takes_exactly_one_leg() -> None:
    errors = errors_of(alert(leg(), leg(), alert_type="single_order"))
    assert errors == ["order_legs: single_order takes exactly one leg, got 2"]


def test_empty_legs_are_refused() -> None:
    assert errors_of({"secret": "s", "alertType": "multi_leg_order", "order_legs": []}) == [
        "order_legs: must hold at least one leg"
    ]


def test_legs_are_sorted_by_sort_order() -> None:
    """Legs run in sort_order, whatever their order in the list."""
    parsed = parse_alert(
        alert(leg(symbol="SECOND", sort_order="2"), leg(symbol="FIRST", sort_order="1")), make_converter()
    )
    assert [x.symbol for x in parsed.legs] == ["FIRST", "SECOND"]


def test_unknown_keys_become_warnings_with_a_hint() -> None:
    """A typo is visible: the key is reported back, with the closest known key."""
    raw = alert(leg(triggerprice="101"), strategy="s1")
    parse_alert(raw, make_converter())
    assert unknown_keys(raw) == [
        "strategy: unknown key, ignored",
        "order_legs[0].triggerprice: unknown key, ignored (did you mean triggerPrice?)",
    ]


def test_root_id_is_the_alert_key() -> None:
    assert parse_alert(alert(id="bar-42"), make_converter()).key == "bar-42"
    assert parse_alert(alert(idempotency_key="k-1"), make_converter()).key == "k-1"


def test_cancel_order_needs_only_a_symbol_or_order_id() -> None:
    parsed = parse_alert(alert({"symbol": "INFY", "transactionType": "S"}, alert_type="cancel_order"), make_converter())
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


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("1e3000000", "must be a whole number, got '1e3000000'"),
        ("1e5000", "must be a whole number, got '1e5000'"),
        ("1_000", "must be a whole number, got '1_000'"),
        ("\u0661\u0660", "must be a whole number, got '\u0661\u0660'"),  # Arabic-Indic digits: int() would take them
        ("0x10", "must be a whole number, got '0x10'"),
        ("1.5", "must be a whole number, got '1.5'"),
        (1e30, "must be a whole number, got '1e+30'"),
        (1.5, "must be a whole number, got '1.5'"),
        (True, "must be a whole number, got true"),
        ("1234567890", "must be a whole number of at most 9 digits, got '1234567890'"),
        (1234567890, "must be a whole number of at most 9 digits, got '1234567890'"),
        ("9" * 60000, "must be a whole number of at most 9 digits, got '" + "9" * 40 + "'... (60000 characters)"),
    ],
)
def test_whole_numbers_are_short_ascii_digits(quantity: object, expected: str) -> None:
    """quantity is checked as text before any conversion: huge exponents used to freeze the event loop."""
    assert errors_of(alert(leg(quantity=quantity))) == [f"order_legs[0].quantity: {expected}"]


@pytest.mark.parametrize(("quantity", "expected"), [("10", 10), ("10.0", 10), (10.0, 10), (999999999, 999999999)])
def test_whole_numbers_that_are_accepted(quantity: object, expected: int) -> None:
    (only,) = order_legs(alert(leg(quantity=quantity)))
    assert only.quantity == expected


def test_sort_order_is_bounded_too() -> None:
    assert errors_of(alert(leg(sort_order="1e400000"))) == [
        "order_legs[0].sort_order: must be a whole number, got '1e400000'"
    ]


def test_a_huge_exponent_is_refused_fast() -> None:
    """`1e3000000` took minutes in int(Decimal(...)): it must be refused by the text checks, before any
    conversion. These exact lines come from those checks (a conversion would have hung, or answered otherwise);
    no timing: the machine's speed decides nothing here."""
    assert errors_of(
        alert(leg(quantity="1e3000000", price="1e10000000", orderType="LMT", triggerPrice="9" * 50000))
    ) == [
        "order_legs[0].quantity: must be a whole number, got '1e3000000'",
        "order_legs[0].price: must be a number, got '1e10000000'",
        (
            "order_legs[0].triggerPrice: must have at most 10 digits before the decimal point and 8 after, got"
            " '9999999999999999999999999999999999999999'... (50000 characters)"
        ),
    ]


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("price", "1e10000000", "must be a number, got '1e10000000'"),
        ("price", 1e30, "must be a number, got '1e+30'"),
        ("price", "1E+2", "must be a number, got '1E+2'"),
        ("price", "Infinity", "must be a number, got 'Infinity'"),
        ("price", "NaN", "must be a number, got 'NaN'"),
        ("price", "\u0661\u0660", "must be a number, got '\u0661\u0660'"),
        ("price", True, "must be a number, got true"),
        ("price", "-0", "must be a number >= 0, got '-0'"),
        ("price", "-5.5", "must be a number >= 0, got '-5.5'"),
        (
            "price",
            "12345678901",
            "must have at most 10 digits before the decimal point and 8 after, got '12345678901'",
        ),
        (
            "triggerPrice",
            "1.123456789",
            "must have at most 10 digits before the decimal point and 8 after, got '1.123456789'",
        ),
    ],
)
def test_decimals_are_short_ascii_numbers(field: str, value: object, expected: str) -> None:
    assert f"order_legs[0].{field}: {expected}" in errors_of(alert(leg(**{field: value, "orderType": "LMT"})))


@pytest.mark.parametrize(
    ("price", "expected"),
    [("101.5", Decimal("101.5")), (101.5, Decimal("101.5")), (100, Decimal(100)), ("9999999999.12345678", None)],
)
def test_decimals_that_are_accepted(price: object, expected: Decimal | None) -> None:
    (only,) = order_legs(alert(leg(price=price, orderType="LMT")))
    assert only.price == (expected if expected is not None else Decimal(str(price)))


def option_leg(**overrides: Any) -> dict[str, Any]:
    base = {
        "exchange": "NFO",
        "symbol": "NIFTY",
        "instrument": "CE",
        "strike_price": "24000",
        "expiry_date": "2026-11-26",
    }
    return leg(**(base | overrides))


@pytest.mark.parametrize(
    ("strike", "expected"),
    [
        ("0", "must be > 0 for options, got 0"),
        ("-0", "must be a number >= 0, got '-0'"),
        ("0.00", "must be > 0 for options, got 0.00"),
    ],
)
def test_strike_price_must_be_positive(strike: str, expected: str) -> None:
    assert errors_of(alert(option_leg(strike_price=strike))) == [f"order_legs[0].strike_price: {expected}"]


@pytest.mark.parametrize(
    "expiry", ["2026-11-26garbage", "2026-11-2", "20261126", "2026-11-26T25:00:00Z", "2026-11-26Tx"]
)
def test_expiry_date_must_be_exactly_a_date(expiry: str) -> None:
    """`text[:10]` used to accept anything after a date."""
    assert errors_of(alert(option_leg(expiry_date=expiry))) == [
        f"order_legs[0].expiry_date: must be a date YYYY-MM-DD, got {expiry!r}"
    ]


@pytest.mark.parametrize("expiry", ["2026-11-26", "2026-11-26T00:00:00Z", "2026-11-26T15:30:00+05:30"])
def test_expiry_date_as_a_date_or_a_complete_timestamp(expiry: str) -> None:
    (option,) = order_legs(alert(option_leg(expiry_date=expiry)))
    assert option.expiry_date == date(2026, 11, 26)


@pytest.mark.parametrize(("meta", "shown"), [("string", "'string'"), ([1, 2], "a list"), (42, "42"), (True, "true")])
def test_meta_must_be_an_object(meta: object, shown: str) -> None:
    """A meta that is not an object used to become an empty Meta: no timenow, no age check."""
    assert errors_of(alert(leg(meta=meta))) == [f"order_legs[0].meta: must be a JSON object, got {shown}"]


@pytest.mark.parametrize("timenow", ["2025-11-20T09:15:00Zjunk", "1" * 16, "x" * 100])
def test_timenow_must_parse_completely(timenow: str) -> None:
    errors = errors_of(alert(leg(meta={"timenow": timenow})))
    assert len(errors) == 1
    assert errors[0].startswith(
        "order_legs[0].meta.timenow: must be an ISO 8601 time such as 2025-11-20T10:30:00Z, got "
    )


def test_timenow_as_epoch_milliseconds() -> None:
    (only,) = order_legs(alert(leg(meta={"timenow": "1763630100000"})))
    assert only.meta is not None
    assert only.meta.timenow == datetime(2025, 11, 20, 9, 15, tzinfo=UTC)


@pytest.mark.parametrize(("symbol", "shown"), [(1e20, "1e+20"), (500325, "500325"), (True, "true"), (None, "null")])
def test_symbol_must_be_a_string(symbol: object, shown: str) -> None:
    """1e20 used to become the symbol "1e+20"."""
    assert errors_of(alert(leg(symbol=symbol))) == [f"order_legs[0].symbol: must be a string, got {shown}"]
    assert errors_of(alert({"symbol": symbol}, alert_type="cancel_order")) == [
        f"order_legs[0].symbol: must be a string, got {shown}"
    ]


def test_at_most_50_legs() -> None:
    assert errors_of(alert(*[leg()] * 51)) == ["order_legs: at most 50 legs in one alert, got 51"]
    assert len(order_legs(alert(*[leg()] * 50))) == 50


def test_thousands_of_empty_legs_are_refused_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """64 KB of `{}` legs blocked the event loop for 6.4 s and answered 8 MB: the list's length is refused
    before a single leg is structured (counted, not timed)."""
    structured: list[object] = []
    structure_leg = parsing._structure_leg  # noqa: SLF001 - counting the parser's own per-leg step

    def counting(*args: Any) -> Any:
        structured.append(args[0])
        return structure_leg(*args)

    monkeypatch.setattr(parsing, "_structure_leg", counting)
    raw = decode_body(b'{"secret": "s", "alertType": "multi_leg_order", "order_legs": [' + b"{}," * 21000 + b"{}]}")
    assert errors_of(raw) == ["order_legs: at most 50 legs in one alert, got 21001"]
    assert structured == []
    assert len(order_legs(alert(leg(symbol="NSE:INFY")))) == 1  # a prefixed symbol: the converter's path
    assert len(structured) == 1  # the counter sees the legs the converter does structure


@pytest.mark.parametrize(("legs", "shown"), [("abc", "'abc'"), ({"a": {}}, "an object"), (7, "7")])
def test_order_legs_must_be_a_list(legs: object, shown: str) -> None:
    """A string was walked character by character: one error line per character."""
    assert errors_of({"secret": "s", "alertType": "multi_leg_order", "order_legs": legs}) == [
        f"order_legs: must be a JSON list of legs, got {shown}"
    ]


def test_error_lines_are_capped_at_50() -> None:
    """50 legs of `{}` make 350 problems: the answer lists 50 and says how many more there are."""
    errors = errors_of(alert(*[{}] * 50))
    assert len(errors) == 51
    assert errors[:2] == [
        "order_legs[0].transactionType: required field missing",
        "order_legs[0].orderType: required field missing",
    ]
    assert errors[-1] == "... and 300 more problem(s) not shown: fix these first"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            b'{"order_legs": [{"transactionType": "B", "quantity": "1", "transactionType": "S"}]}',
            "body has the key 'transactionType' twice in one object: send each key once",
        ),
        (b'{"secret": "a", "secret": "a"}', "body has the key 'secret' twice in one object: send each key once"),
        (b"[" * 3000, "body is not JSON: it is nested too deeply"),
        (b'{"a":' * 3000, "body is not JSON: it is nested too deeply"),
    ],
)
def test_duplicate_keys_and_deep_nesting_are_400(body: bytes, message: str) -> None:
    """A repeated key used to win silently (B then S: a sell); deep nesting raised RecursionError (500)."""
    with pytest.raises(BadRequestError) as caught:
        decode_body(body)
    assert str(caught.value) == message


def test_same_key_in_different_objects_is_fine() -> None:
    raw = decode_body(json.dumps(alert(leg(), leg())).encode())
    assert len(raw["order_legs"]) == 2


def test_unknown_key_warnings_are_capped_at_50(monkeypatch: pytest.MonkeyPatch) -> None:
    """Thousands of unknown keys took a difflib lookup each (0.24 s for 6000) and filled the answer."""
    raw = alert(leg(**{f"k{i}": 0 for i in range(6000)}))
    looked_up: list[str] = []
    close_matches = difflib.get_close_matches

    def counting(word: str, *args: Any, **kwargs: Any) -> list[str]:
        looked_up.append(word)
        return close_matches(word, *args, **kwargs)

    monkeypatch.setattr(difflib, "get_close_matches", counting)
    warnings = unknown_keys(raw)
    assert len(looked_up) <= 50  # counted, not timed: at most one difflib look-up per warning line
    assert len(warnings) == 51
    assert warnings[0] == "order_legs[0].k0: unknown key, ignored"
    assert warnings[-1] == "... and 5950 more unknown key(s) not shown"
