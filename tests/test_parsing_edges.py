"""The parser at the edges of each rule: the exact line a trader reads for each mistake, the values at a limit
that still pass, and what an alert becomes when it is spelled another accepted way.

Each case here was a surviving mutant of `tvbridge/parsing.py` (docs/testing.md): a change to the code that no
test noticed. The converter is built per call, as the app builds it, so the hooks' registration is under test.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from helpers import alert, leg

from tvbridge.errors import BadRequestError, InvalidAlertError
from tvbridge.models import Alert, OptionType, OrderAlert, OrderLeg, OrderType, Product, Side
from tvbridge.parsing import (
    check_encodable,
    decode_body,
    make_converter,
    might_hold_surrogates,
    parse_alert,
    unknown_keys,
)
from tvbridge.tickers import Prefixed, split_prefix

OPTION = {"exchange": "NFO", "symbol": "NIFTY", "instrument": "OPT", "option_type": "CE", "strike_price": "24000"}
STAMP_40 = "2026-11-26T10:00:00." + "0" * 19 + "Z"
"""An ISO time of exactly 40 characters (the longest taken); one more digit makes 41."""
STAMP_41 = "2026-11-26T10:00:00." + "0" * 20 + "Z"


def parsed(raw: dict[str, Any]) -> Alert:
    return parse_alert(raw, make_converter())


def legs_of(raw: dict[str, Any]) -> tuple[OrderLeg, ...]:
    result = parsed(raw)
    assert isinstance(result, OrderAlert)
    return result.legs


def errors_of(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidAlertError) as caught:
        parsed(raw)
    return caught.value.errors


def timenow(text: object) -> dict[str, Any]:
    return alert(leg(meta={"interval": "1D", "timenow": text}))


@pytest.mark.parametrize(
    ("raw", "errors"),
    [
        (alert(leg(symbol="")), ["order_legs[0].symbol: must not be empty"]),
        (alert(leg(symbol="NSE:")), ["order_legs[0].symbol: 'NSE:' has an exchange prefix but no symbol after it"]),
        (alert(leg(symbol=5)), ["order_legs[0].symbol: must be a string, got 5"]),
        (alert(leg(quantity=False)), ["order_legs[0].quantity: must be a whole number, got false"]),
        (alert(leg(quantity=None)), ["order_legs[0].quantity: expected a value, got null"]),
        (alert(leg(quantity=[1])), ["order_legs[0].quantity: expected a value, got a list"]),
        (alert(leg(quantity="A" * 40)), [f"order_legs[0].quantity: must be a whole number, got '{'A' * 40}'"]),
        (
            alert(leg(quantity="A" * 41)),
            [f"order_legs[0].quantity: must be a whole number, got '{'A' * 40}'... (41 characters)"],
        ),
        (alert(leg(price="1e3")), ["order_legs[0].price: must be a number, got '1e3'"]),
        (alert(leg(), id=True), ["id: must be a string, got true"]),
        (alert(leg(), id=["k"]), ["id: must be a string, got a list"]),
        (alert(leg(meta="x")), ["order_legs[0].meta: must be a JSON object, got 'x'"]),
        (
            alert(leg(**{**OPTION, "option_type": None, "expiry_date": "2026-12-31"})),
            ["order_legs[0].option_type: is required for instrument OPT (CE or PE)"],
        ),
        (
            alert(leg(**{**OPTION, "instrument": "CE", "option_type": "PE", "expiry_date": "2026-12-31"})),
            ["order_legs[0].option_type: PE contradicts instrument CE"],
        ),
        (
            alert(leg(**{**OPTION, "symbol": "NIFTY261229C24000", "option_type": None, "expiry_date": "2026-12-31"})),
            ["order_legs[0].expiry_date: 2026-12-31 contradicts the option ticker NIFTY261229C24000 (2026-12-29)"],
        ),
        (
            alert({"symbol": "FOO:RELIANCE", "exchange": "NSE"}, alert_type="cancel_order"),
            [
                (
                    "order_legs[0].symbol: exchange prefix 'FOO' in 'FOO:RELIANCE' is not an exchange tvbridge knows"
                    " (NSE, BSE, NFO, BFO, MCX)"
                )
            ],
        ),
        (
            timenow("20261126T103000Z"),
            [
                (
                    "order_legs[0].meta.timenow: must be an ISO 8601 time such as 2025-11-20T10:30:00Z,"
                    " got '20261126T103000Z'"
                )
            ],
        ),
        (
            timenow(STAMP_41),
            [
                (
                    "order_legs[0].meta.timenow: must be an ISO 8601 time such as 2025-11-20T10:30:00Z,"
                    f" got '{STAMP_41[:40]}'... (41 characters)"
                )
            ],
        ),
        (
            alert(leg(**OPTION, expiry_date=STAMP_41)),
            [f"order_legs[0].expiry_date: must be a date YYYY-MM-DD, got '{STAMP_41[:40]}'... (41 characters)"],
        ),
    ],
    ids=[
        "empty symbol",
        "prefix without symbol",
        "numeric symbol",
        "false quantity",
        "null quantity",
        "list quantity",
        "40 characters shown whole",
        "41 characters cut",
        "exponent price",
        "true id",
        "list id",
        "meta not an object",
        "option without type",
        "type contradicts CE",
        "expiry contradicts ticker",
        "cancel with unknown prefix",
        "ISO basic format time",
        "time of 41 characters",
        "date of 41 characters",
    ],
)
def test_each_mistake_reads_as_exactly_this(raw: dict[str, Any], errors: list[str]) -> None:
    """The 422's lines, word for word: the path the trader must fix and what is wrong there, nothing more."""
    assert errors_of(raw) == errors


def test_fifty_problems_are_all_shown_with_no_more_line() -> None:
    """The cap is 50 lines: exactly 50 problems are shown as they are, with no "... and 0 more" line."""
    errors = errors_of(alert(*[leg(symbol="") for _ in range(50)]))
    assert errors == [f"order_legs[{i}].symbol: must not be empty" for i in range(50)]


def test_values_at_the_limits_still_pass() -> None:
    """Prices and strikes below 1 are real (a penny stock, a far option): only 0 and less are refused."""
    (limit,) = legs_of(alert(leg(orderType="LMT", price="0.5")))
    assert limit.price == Decimal("0.5")
    (option,) = legs_of(alert(leg(**{**OPTION, "strike_price": "0.5"}, expiry_date="2026-12-31")))
    assert option.strike_price == Decimal("0.5")


def test_an_option_type_that_agrees_with_ce_is_fine() -> None:
    (option,) = legs_of(alert(leg(**{**OPTION, "instrument": "CE"}, expiry_date="2026-12-31")))
    assert option.option_type is OptionType.CALL


def test_single_order_takes_one_leg() -> None:
    assert len(legs_of(alert(leg(), alert_type="single_order"))) == 1


def test_words_and_dhan_codes_mean_the_same_order() -> None:
    """`buy`, `market`, `NRML` are the guide's words for Dhan's B, MKT and M (case does not matter)."""
    (order,) = legs_of(alert(leg(transactionType="buy", orderType="market", productType="NRML")))
    assert (order.side, order.order_type, order.product) == (Side.BUY, OrderType.MARKET, Product.MARGIN)


def test_a_decimal_from_our_own_code_is_taken_as_its_value() -> None:
    """Conformance specs and tests hand the parser `Decimal`s, not text: the value is kept."""
    (order,) = legs_of(alert(leg(orderType="LMT", price=Decimal("101.5"))))
    assert order.price == Decimal("101.5")


def test_idempotency_key_is_the_alerts_key_unless_id_is_given() -> None:
    """The key that dedupes resends: `id`, or TradingView's `idempotency_key` when there is no `id`."""
    only_idempotency = parsed(alert(leg(), idempotency_key="k1"))
    assert isinstance(only_idempotency, OrderAlert)
    assert only_idempotency.key == "k1"
    both = parsed(alert(leg(), idempotency_key="k1", id="i1"))
    assert isinstance(both, OrderAlert)
    assert both.key == "i1"


@pytest.mark.parametrize(
    ("value", "got"), [([], "a list"), ([1], "a list"), ({}, "an object"), ({"B": 1}, "an object")]
)
def test_a_list_or_an_object_for_a_choice_is_named_as_such(value: object, got: str) -> None:
    """Each field with a fixed set of words (alertType, side, order type, exchange, instrument, product) given a JSON
    list or object: the 422 says what came, field by field, and nothing breaks on looking the value up."""
    enums = ("transactionType", "orderType", "exchange", "instrument", "productType")
    raw = {**alert(leg(**dict.fromkeys(enums, value))), "alertType": value}
    assert errors_of(raw) == [
        f"alertType: expected a value, got {got}",
        *(f"order_legs[0].{key}: expected a value, got {got}" for key in enums),
    ]


CONVERTERS_ALERTS: dict[str, dict[str, Any]] = {
    # alerts the common parser leaves to the converter: its own reading of the key must be the same
    "a cancel": alert({"order_id": "123"}, alert_type="cancel_order"),
    "an option leg": alert(leg(instrument="OPT", option_type="CE", strike_price="24000", expiry_date="2026-12-29")),
}


@pytest.mark.parametrize("raw", CONVERTERS_ALERTS.values(), ids=CONVERTERS_ALERTS.keys())
def test_the_converter_reads_the_key_as_the_common_parser_does(raw: dict[str, Any]) -> None:
    """`idempotency_key` is the key when there is no `id`; an `id`, even null, wins: on every alert, not only on
    the common ones (a cancel or an option alert resent under the same key must be recognised as a repeat)."""
    assert parsed({**raw, "idempotency_key": "k1"}).key == "k1"
    assert parsed({**raw, "idempotency_key": "k1", "id": "i1"}).key == "i1"
    assert parsed({**raw, "idempotency_key": "k1", "id": None}).key is None
    assert parsed({**raw, "id": "i1"}).key == "i1"
    assert parsed(raw).key is None


def test_legs_without_sort_order_keep_their_place() -> None:
    """A leg without `sort_order` counts as its position (1, 2, ...); ties keep the alert's order."""
    first, second = legs_of(alert(leg(sort_order=None, symbol="A"), leg(sort_order="1", symbol="B")))
    assert (first.symbol, second.symbol) == ("A", "B")
    placed = legs_of(alert(leg(sort_order="2", symbol="A"), leg(sort_order=None, symbol="B"), leg(symbol="C")))
    assert [one.symbol for one in placed] == ["C", "A", "B"]


def test_times_are_read_in_their_own_zone_or_utc() -> None:
    """`timenow` with an offset is that instant; without one it is UTC; 40 characters are still a time."""
    with_offset = legs_of(timenow("2026-11-26T10:00:00+05:30"))[0].meta
    assert with_offset is not None
    assert with_offset.timenow == datetime(2026, 11, 26, 4, 30, tzinfo=UTC)
    naive = legs_of(timenow("2026-11-26T10:00:00"))[0].meta
    assert naive is not None
    assert naive.timenow == datetime(2026, 11, 26, 10, 0, tzinfo=UTC)
    assert naive.timenow.utcoffset() == timedelta(0)
    longest = legs_of(timenow(STAMP_40))[0].meta
    assert longest is not None
    assert longest.timenow == datetime(2026, 11, 26, 10, 0, tzinfo=UTC)


def test_expiry_dates_may_come_as_timestamps() -> None:
    """A full timestamp (with `T` or a space, up to 40 characters) is taken as its date."""
    for text in ("2026-11-26 10:00:00", STAMP_40):
        (option,) = legs_of(alert(leg(**OPTION, expiry_date=text)))
        assert option.expiry_date == date(2026, 11, 26)


@pytest.fixture
def india_local_time() -> Iterator[None]:
    """The process's local zone is Asia/Kolkata, as on a server in India, for the test's length."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Asia/Kolkata"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


@pytest.mark.usefixtures("india_local_time")
def test_epoch_milliseconds_are_utc_whatever_the_servers_zone() -> None:
    """TradingView's `{{time}}` as epoch milliseconds is an instant: a server on IST must not read it 5:30 off."""
    instant = datetime(2026, 11, 26, 10, 30, tzinfo=UTC)
    meta = legs_of(timenow(str(int(instant.timestamp() * 1000))))[0].meta
    assert meta is not None
    assert meta.timenow == instant
    assert meta.timenow.utcoffset() == timedelta(0)
    assert datetime.now().astimezone().utcoffset() == timedelta(hours=5, minutes=30)  # the zone did apply


def test_a_key_given_twice_is_named() -> None:
    """The duplicated key is the one named, not the first key of the object."""
    with pytest.raises(BadRequestError) as caught:
        decode_body(b'{"a": 1, "b": 2, "b": 3}')
    assert str(caught.value) == "body has the key 'b' twice in one object: send each key once"


def test_our_attribute_names_are_unknown_keys_in_an_alert() -> None:
    """`side` is our name for `transactionType`; in an order leg it is a key the format does not know."""
    assert unknown_keys(alert(leg(side="S"))) == ["order_legs[0].side: unknown key, ignored"]


def test_a_symbol_without_a_prefix_comes_back_as_it_is() -> None:
    assert split_prefix("RELIANCE") == Prefixed(symbol="RELIANCE")


def strategy_leg(**fields: Any) -> dict[str, Any]:
    """A leg with the strategy keys given; the template's side and quantity are left out (a target decides)."""
    raw = {k: v for k, v in leg(**fields).items() if v is not None}
    if "position_size" in fields or "market_position" in fields:
        del raw["transactionType"], raw["quantity"]
    return raw


@pytest.mark.parametrize(
    ("fields", "error"),
    [
        (
            {"position_size": "5", "manage_position": "EXIT_ALL"},
            "manage_position: EXIT_ALL contradicts a target position (position_size 0 closes it)",
        ),
        (
            {"market_position": "long", "market_position_size": "-5"},
            "market_position_size: must be >= 0 (market_position gives the side), got -5",
        ),
        (
            {"position_size": "5", "market_position_size": "5"},
            "market_position_size: needs market_position (long, short or flat)",
        ),
        (
            {"market_position": "flat", "market_position_size": "5"},
            "market_position_size: 5 contradicts market_position flat",
        ),
        ({"market_position": "long", "position_size": "-5"}, "market_position: long contradicts position_size -5"),
        ({"market_position": "long", "position_size": "0"}, "market_position: long contradicts position_size 0"),
        ({"market_position": "short", "position_size": "5"}, "market_position: short contradicts position_size 5"),
        ({"market_position": "flat", "position_size": "1"}, "market_position: flat contradicts position_size 1"),
        (
            {"market_position": "long", "position_size": "5", "market_position_size": "3"},
            "market_position_size: 3 contradicts position_size 5",
        ),
        (
            {"quantity_type": "capital", "price": "0"},
            "price: must be > 0 for quantity_type capital (sizing uses it)",
        ),
        (
            {"quantity_type": "risk", "price": "100", "triggerPrice": "100"},
            (
                "triggerPrice: is required for quantity_type risk, different from price (the stop: risk per unit is"
                " the distance)"
            ),
        ),
        (
            {"quantity_type": "risk", "orderType": "SL-M", "price": "100", "triggerPrice": "99"},
            (
                "quantity_type: risk sizing takes triggerPrice as the stop, but on orderType SL-M it is the entry"
                " trigger: use MKT or LMT with triggerPrice as the stop"
            ),
        ),
        (
            {**OPTION, "symbol": "NIFTY261229C24000", "strike_price": None, "expiry_date": "current_week"},
            "expiry_date: current_week contradicts the expiry 2026-12-29 of the option ticker",
        ),
    ],
)
def test_each_strategy_contradiction_reads_as_exactly_this(fields: dict[str, Any], error: str) -> None:
    """A target or a sizing the alert contradicts itself about is one line naming the key and both values."""
    assert errors_of(alert(strategy_leg(**fields))) == [f"order_legs[0].{error}"]


@pytest.mark.parametrize(
    ("fields", "target"),
    [
        ({"market_position": "flat", "market_position_size": "0"}, (None, "flat", 0)),
        ({"market_position": "flat"}, (None, "flat", None)),
        ({"market_position": "flat", "position_size": "0"}, (0, "flat", None)),
        ({"market_position": "long", "position_size": "1"}, (1, "long", None)),
        ({"market_position": "short", "position_size": "-1"}, (-1, "short", None)),
        ({"market_position": "short", "position_size": "-5", "market_position_size": "5"}, (-5, "short", 5)),
    ],
)
def test_targets_that_agree_with_themselves_pass(fields: dict[str, Any], target: tuple[Any, ...]) -> None:
    (only,) = legs_of(alert(strategy_leg(**fields)))
    assert (only.position_size, only.market_position, only.market_position_size) == target


def test_risk_sizing_with_a_stop_apart_from_the_price_passes() -> None:
    (only,) = legs_of(alert(leg(quantity_type="risk", orderType="LMT", price="100", triggerPrice="95")))
    assert (only.price, only.trigger_price) == (Decimal(100), Decimal(95))


LONE = "\ud800"
UNENCODABLE = "cannot be encoded (a lone surrogate such as \\ud800)"


def test_every_unencodable_text_is_named_by_its_path() -> None:
    """A lone surrogate in a value, a nested value, a list item or a key: one 422 line each, where it is."""
    raw = {
        "secret": "s",
        "alertType": "multi_leg_order",
        "order_legs": [{"symbol": LONE, "meta": {"interval": LONE}}],
        LONE: 1,
        "note": ["fine", LONE],
    }
    with pytest.raises(InvalidAlertError) as caught:
        check_encodable(raw)
    assert caught.value.errors == [
        f"order_legs[0].symbol: text that {UNENCODABLE}",
        f"order_legs[0].meta.interval: text that {UNENCODABLE}",
        f"alert: a key that {UNENCODABLE}",
        f"note[1]: text that {UNENCODABLE}",
    ]


def test_the_root_secret_is_left_to_the_secret_check() -> None:
    """An unencodable root `secret` is a wrong secret (401 from the auth check), not a 422 about its text; the
    same text under another key, or a `secret` key inside a leg, is named."""
    check_encodable({"secret": LONE, "alertType": "single_order"})
    with pytest.raises(InvalidAlertError) as caught:
        check_encodable({"secret": "s", "order_legs": [{"secret": LONE}]})
    assert caught.value.errors == [f"order_legs[0].secret: text that {UNENCODABLE}"]


def test_only_escapes_or_surrogate_bytes_can_hold_a_lone_surrogate() -> None:
    assert might_hold_surrogates(b'{"a": "\\ud800"}')
    assert might_hold_surrogates(b'{"a": "\xed\xa0\x80"}')
    assert not might_hold_surrogates(b'{"a": "plain text\\n"}')


OPTION_NO_STRIKE = {key: value for key, value in OPTION.items() if key != "strike_price"}


@pytest.mark.parametrize(
    ("raw", "errors"),
    [
        (
            alert(leg(orderType="LMT", price="100", target_price="90")),
            ["order_legs[0].target_price: 90 must be above the entry price 100 for a long (B)"],
        ),
        (
            alert(leg(**OPTION_NO_STRIKE, expiry_date="2026-12-29")),
            [
                (
                    "order_legs[0].strike_price: is required for options (the nearest expiry is not guessed): a strike,"
                    " or ATM, ATM+N, ATM-N"
                )
            ],
        ),
        (
            alert(leg(**OPTION)),
            [
                (
                    "order_legs[0].expiry_date: is required for options (the nearest expiry is not guessed): a date, or"
                    " current_week, next_week, current_month, next_month"
                )
            ],
        ),
    ],
    ids=["bracket on the wrong side", "option without strike", "option without expiry"],
)
def test_each_missing_part_reads_as_exactly_this(raw: dict[str, Any], errors: list[str]) -> None:
    assert errors_of(raw) == errors


@pytest.mark.parametrize(("strike", "offset"), [("ATM", 0), ("ATM+2", 2), ("atm - 3", -3), ("ATM+50", 50)])
def test_atm_strikes_count_steps_each_way(strike: str, offset: int) -> None:
    """ATM+N and ATM-N are N strikes up or down the grid, up to 50 each way."""
    (option,) = legs_of(
        alert(leg(**{**OPTION, "strike_price": strike}, expiry_date="2026-12-29", underlying_price="24000"))
    )
    assert (option.strike_offset, option.strike_price) == (offset, None)


def test_capital_sizing_takes_a_price_below_one() -> None:
    (only,) = legs_of(alert(leg(quantity_type="capital", price="0.5")))
    assert only.price == Decimal("0.5")


@pytest.mark.parametrize("missing", [None, ""], ids=["left out", "empty"])
def test_a_target_leg_without_side_or_quantity_gets_placeholders(missing: str | None) -> None:
    """Left out or empty (TradingView fills nothing in): a BUY of 0, replaced before sending by the difference to
    the position; a side and quantity the alert does give are kept."""
    raw = leg(position_size="5", quantity=missing, transactionType=missing)
    if missing is None:
        del raw["quantity"], raw["transactionType"]
    (target,) = legs_of(alert(raw))
    assert (target.side, target.quantity) == (Side.BUY, 0)
    (given,) = legs_of(alert(leg(position_size="5", quantity="7", transactionType="S")))
    assert (given.side, given.quantity) == (Side.SELL, 7)


def test_unknown_meta_keys_are_warned_about_where_they_are() -> None:
    raw = alert(leg(meta={"intervall": "1D"}), meta={"timenoww": "x"})
    assert unknown_keys(raw) == [
        "meta.timenoww: unknown key, ignored (did you mean timenow?)",
        "order_legs[0].meta.intervall: unknown key, ignored (did you mean interval?)",
    ]


def test_empty_target_keys_do_not_make_a_target() -> None:
    """`position_size` and `market_position` left empty (TradingView filled nothing in) are not a target: the
    side and quantity the leg lacks are named as missing, next to the empty values."""
    raw = leg(position_size="", market_position="")
    del raw["quantity"], raw["transactionType"]
    assert errors_of(alert(raw)) == [
        "order_legs[0].transactionType: required field missing",
        "order_legs[0].quantity: required field missing",
        "order_legs[0].position_size: must be a whole number, got ''",
        "order_legs[0].market_position: must be one of long, short, flat, got ''",
    ]
