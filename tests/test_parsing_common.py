"""The common alert's own parser (`parsing.common_order_alert`, issue 22) gives what the converter gives, field for
field, and leaves everything else to the converter: every alert below is parsed both ways and compared, the
422's problem lines included."""

from __future__ import annotations

import copy
import itertools
from typing import Any

import cattrs
import pytest
from helpers import alert, leg

from tvbridge import parsing
from tvbridge.errors import InvalidAlertError
from tvbridge.models import Alert
from tvbridge.parsing import common_order_alert, make_converter, parse_alert

CONVERTER = make_converter()


def answer(raw: dict[str, Any]) -> Alert | list[str]:
    """`parse_alert`'s answer: the alert, or the 422's problem lines."""
    try:
        return parse_alert(copy.deepcopy(raw), CONVERTER)
    except InvalidAlertError as e:
        return e.errors


def by_converter(raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Alert | list[str]:
    """`parse_alert`'s answer with the common parser switched off: the converter's alone."""
    with monkeypatch.context() as patch:
        patch.setattr(parsing, "common_order_alert", lambda _raw: None)
        return answer(raw)


LEG_VARIANTS: dict[str, list[Any]] = {
    "transactionType": ["B", "S", "BUY", "sell", " b ", "X", "", None, 1],
    "orderType": ["MKT", "LMT", "SL", "SL-M", "market", "LIMIT", "slm", "STOP_LOSS_MARKET", "bad"],
    "quantity": ["10", 10, "10.0", 10.0, " 7 ", "0", "-3", "1e3", "1234567890", True, None, "{{qty}}"],
    "exchange": ["NSE", "nfo", "MCX", "LSE", None],
    "symbol": ["RELIANCE", " TCS ", "NSE:INFY", "BSE:INFY", "", "{{ticker}}", 12, None, "NIFTY261229C24000"],
    "instrument": ["EQ", "fut", "CE", "OPT", "XX"],
    "productType": ["C", "I", "M", "MTF", "INTRADAY", "nrml", "Z"],
    "sort_order": ["1", 2, None, "x", "0"],
    "price": ["0", "101.5", 101.5, 0, "-1", "12345678901", None, "1.123456789"],
    "triggerPrice": ["100", None, "0", "abc"],
}
META_VARIANTS: list[Any] = [
    {"interval": "1D", "time": "2025-11-20T09:15:00Z", "timenow": "2025-11-20T09:15:01Z"},
    {"timenow": "1763630101000"},
    {"timenow": "2025-11-20T09:15:01"},
    {"timenow": "yesterday"},
    {"interval": 5, "extra": "ignored"},
    {"interval": None, "time": None, "timenow": None},
    {},
    None,
    "not an object",
    [1],
]


def alerts() -> list[dict[str, Any]]:
    """One key changed at a time from the guide's alert, legs and roots combined, and unusual shapes."""
    found: list[dict[str, Any]] = [alert()]
    for key, values in LEG_VARIANTS.items():
        found += [alert(leg(**{key: value})) for value in values]
    found += [alert(leg(meta=meta)) for meta in META_VARIANTS]
    found += [alert(meta=meta) for meta in META_VARIANTS]
    found += [
        alert(*(leg(sort_order=order, symbol=f"S{n}") for n, order in enumerate(orders)))
        for orders in itertools.permutations(["3", "1", None])
    ]
    found += [
        alert(alert_type="single_order"),
        alert(leg(), leg(symbol="TCS"), alert_type="single_order"),
        alert(alert_type="SINGLE_ORDER"),
        alert(alert_type="cancel_order"),
        alert(alert_type="nope"),
        alert(id="abc-1"),
        alert(id=42),
        alert(id=None, idempotency_key="k-1"),
        alert(idempotency_key="k-2"),
        alert(id="a", idempotency_key="b"),
        alert(id=True),
        alert(extra_root="warned, ignored"),
        alert(leg(extra_leg="warned, ignored")),
        alert(leg(option_type="CE", strike_price="24000", expiry_date="2026-12-29", instrument="OPT")),
        alert(leg(instrument="CE", strike_price="ATM", expiry_date="current_week", underlying_price="24010")),
        alert(leg(manage_position="EXIT_ALL", quantity="")),
        alert(leg(position_size="5")),
        alert(leg(target_price="110", stoploss_price="90", orderType="LMT", price="100")),
        alert(leg(orderType="LMT", price="0")),
        alert(leg(orderType="SL", price="100")),
        alert(leg(quantity_unit="lots")),
        {"secret": "s", "alertType": "multi_leg_order"},
        {"secret": "s", "alertType": "multi_leg_order", "order_legs": []},
        {"secret": "s", "alertType": "multi_leg_order", "order_legs": "legs"},
        {"secret": "s", "alertType": "multi_leg_order", "order_legs": [leg()] * 51},
        {"secret": "s", "alertType": "multi_leg_order", "order_legs": ["leg"]},
        {"secret": "s", "order_legs": [leg()]},
    ]
    for raw in list(found[:12]):
        missing = copy.deepcopy(raw)
        del missing["order_legs"][0]["quantity"]
        found.append(missing)
    return found


@pytest.mark.parametrize("raw", alerts())
def test_the_common_parser_agrees_with_the_converter(raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The same alert, or the same 422 lines, with and without the common parser."""
    expected = by_converter(raw, monkeypatch)
    common = common_order_alert(copy.deepcopy(raw))
    if common is not None:  # taken: exactly the converter's alert
        assert common == expected
    assert answer(raw) == expected


def test_the_guides_alerts_take_the_common_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    """The alert the guide's template sends, and most valid variants, are parsed without the converter."""
    assert common_order_alert(alert()) is not None
    taken = [raw for raw in alerts() if common_order_alert(copy.deepcopy(raw)) is not None]
    valid = [raw for raw in alerts() if not isinstance(by_converter(raw, monkeypatch), list)]
    assert len(taken) >= 0.6 * len(valid), (len(taken), len(valid))


class Unused(cattrs.Converter):
    """A converter `parse_alert` must not ask: the common alert is parsed without it."""

    def structure(self, obj: Any, cl: Any) -> Any:
        raise AssertionError(f"parse_alert asked the converter for a {cl} from {obj!r}")


FULL_META = {"interval": "5", "time": "2025-11-20T09:15:00Z", "timenow": "2025-11-20T09:15:01Z"}
TAKEN: dict[str, dict[str, Any]] = {
    # every valid alert of the common shape: the converter would give the same, only slower (issue 22)
    "the guide's alert": alert(),
    "meta at the root too": alert(meta=FULL_META),
    "meta null at the root and on the leg": alert(leg(meta=None), meta=None),
    "a leg without meta": alert({k: v for k, v in leg().items() if k != "meta"}),
    "meta with only timenow, in epoch ms": alert(leg(meta={"timenow": "1763630101000"})),
    "meta with only interval and time": alert(leg(meta={"interval": "1D", "time": "x"}), meta={"interval": 15}),
    "meta with a key it ignores": alert(leg(meta={**FULL_META, "close": "101.5"})),
    "sort_order and triggerPrice null": alert(leg(sort_order=None, triggerPrice=None)),
    "a stop-loss with its trigger": alert(leg(orderType="SL", price="101", triggerPrice="100")),
    "a future": alert(leg(instrument="FUT", exchange="NFO", symbol="NIFTY-Dec2026-FUT", productType="M")),
    "JSON numbers": alert(leg(quantity=10, price=101.5, sort_order=2, orderType="LMT")),
    "an id": alert(id="abc-1"),
    "an idempotency_key": alert(idempotency_key="k-2"),
    "an id null and an idempotency_key": alert(id=None, idempotency_key="k-1"),
    "both: the id wins": alert(id="a", idempotency_key="b"),
    "a single order": alert(alert_type="single_order"),
    "two legs": alert(leg(sort_order="2"), leg(symbol="TCS", transactionType="S")),
    "the most legs an alert may have": alert(*(leg(symbol=f"S{n}", sort_order=None) for n in range(parsing.MAX_LEGS))),
}


@pytest.mark.parametrize("raw", TAKEN.values(), ids=TAKEN.keys())
def test_every_valid_alert_of_the_common_shape_takes_the_common_parser(
    raw: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each is parsed without the converter, to exactly the converter's alert: the common parser giving up on one
    would still answer right, but at the converter's cost on every alert TradingView sends (issue 22)."""
    expected = by_converter(raw, monkeypatch)
    assert not isinstance(expected, list), expected
    assert common_order_alert(copy.deepcopy(raw)) == expected
    assert parse_alert(copy.deepcopy(raw), Unused()) == expected
