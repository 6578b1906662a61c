"""TradingView's ticker spellings: `NSE:RELIANCE`, option tickers, continuous futures, as every broker sees them."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from helpers import ClientFactory, alert, leg

from tvbridge.config import Config
from tvbridge.errors import InvalidAlertError
from tvbridge.keys import BROKERS
from tvbridge.models import CancelAlert, Exchange, Instrument, OptionType, OrderAlert, OrderLeg
from tvbridge.parsing import make_converter, parse_alert


def parsed_leg(**fields: Any) -> OrderLeg:
    raw = leg(**fields)
    for key in [k for k, v in raw.items() if v is None]:
        del raw[key]
    parsed = parse_alert(alert(raw), make_converter())
    assert isinstance(parsed, OrderAlert)
    return parsed.legs[0]


def errors_of(**fields: Any) -> list[str]:
    raw = leg(**fields)
    for key in [k for k, v in raw.items() if v is None]:
        del raw[key]
    with pytest.raises(InvalidAlertError) as caught:
        parse_alert(alert(raw), make_converter())
    return caught.value.errors


def test_an_exchange_prefix_is_taken_off_the_symbol() -> None:
    """`NSE:RELIANCE` (what `{{exchange}}:{{ticker}}` gives) is symbol RELIANCE on NSE."""
    parsed = parsed_leg(symbol="NSE:RELIANCE")

    assert (parsed.symbol, parsed.exchange) == ("RELIANCE", Exchange.NSE)


def test_the_prefix_supplies_a_missing_exchange() -> None:
    """A leg without an `exchange` key takes the prefix's: the alert names the exchange once, in the ticker."""
    parsed = parsed_leg(symbol="BSE:RELIANCE", exchange=None)

    assert (parsed.symbol, parsed.exchange) == ("RELIANCE", Exchange.BSE)


def test_nse_prefix_agrees_with_nfo() -> None:
    """TradingView lists NSE's derivatives under `NSE:` too: the prefix and `exchange` NFO name one venue."""
    parsed = parsed_leg(symbol="NSE:NIFTY1!", exchange="NFO", instrument="FUT", productType="M")

    assert (parsed.symbol, parsed.exchange, parsed.instrument) == ("NIFTY1!", Exchange.NFO, Instrument.FUTURE)


def test_a_prefix_that_contradicts_the_exchange_is_refused_naming_both() -> None:
    """BSE:RELIANCE with exchange NSE: neither is preferred; the 422 names both, on the symbol's path."""
    assert errors_of(symbol="BSE:RELIANCE", exchange="NSE") == [
        "order_legs[0].symbol: exchange prefix BSE of BSE:RELIANCE contradicts exchange NSE"
    ]


def test_an_unknown_prefix_is_refused_with_the_other_problems() -> None:
    """A prefix that is no exchange is named, and reported together with the leg's other mistakes."""
    assert errors_of(symbol="NYSE:IBM", quantity="ten") == [
        "order_legs[0].quantity: must be a whole number, got 'ten'",
        (
            "order_legs[0].symbol: exchange prefix 'NYSE' in 'NYSE:IBM' is not an exchange tvbridge knows "
            "(NSE, BSE, NFO, BFO, MCX)"
        ),
    ]


def test_an_unreplaced_placeholder_prefix_says_placeholder() -> None:
    """`{{exchange}}:{{ticker}}` left unfilled is reported as a placeholder, not as an unknown exchange."""
    assert errors_of(symbol="{{exchange}}:{{ticker}}") == [
        "order_legs[0].symbol: unreplaced TradingView placeholder {{exchange}}: TradingView did not fill it in"
    ]


def test_an_option_ticker_is_read_as_underlying_expiry_strike_and_type() -> None:
    """NIFTY261229C24000 on an option leg: NIFTY, 2026-12-29, strike 24000, CE; no other option key needed."""
    parsed = parsed_leg(symbol="NSE:NIFTY261229C24000", exchange=None, instrument="OPT", productType="M")

    assert (parsed.symbol, parsed.exchange, parsed.instrument) == ("NIFTY", Exchange.NSE, Instrument.OPTION)
    assert (parsed.expiry_date, parsed.strike_price, parsed.option_type) == (
        date(2026, 12, 29),
        Decimal(24000),
        OptionType.CALL,
    )


def test_option_fields_that_agree_with_the_ticker_are_fine_and_others_are_named() -> None:
    """Keys the alert also gives must say what the ticker says; each contradiction is its own error line."""
    same = parsed_leg(
        symbol="NIFTY261229P24500",
        exchange="NFO",
        instrument="OPT",
        option_type="PE",
        strike_price="24500.0",
        expiry_date="2026-12-29",
        productType="M",
    )
    assert (same.symbol, same.option_type, same.strike_price) == ("NIFTY", OptionType.PUT, Decimal(24500))

    assert errors_of(
        symbol="NIFTY261229P24500", exchange="NFO", instrument="CE", strike_price="24000", productType="M"
    ) == [
        "order_legs[0].option_type: CE contradicts the option ticker NIFTY261229P24500 (PE)",
        "order_legs[0].strike_price: 24000 contradicts the option ticker NIFTY261229P24500 (24500)",
    ]


def test_an_option_ticker_with_no_real_date_is_refused() -> None:
    """YYMMDD 261329 has no month 13: said in terms of the ticker, not as a silently wrong contract."""
    errors = errors_of(symbol="NIFTY261329C24000", exchange="NFO", instrument="OPT", productType="M")

    assert errors[0] == (
        "order_legs[0].symbol: 'NIFTY261329C24000' reads as a TradingView option ticker, but 261329 is not a"
        " date (YYMMDD)"
    )


def test_tickers_are_read_as_options_only_on_option_legs() -> None:
    """An equity or future keeps its symbol as given: the option shape is read only when the leg says OPT."""
    assert parsed_leg(symbol="NIFTY261229C24000").symbol == "NIFTY261229C24000"
    assert parsed_leg(symbol="NIFTY1!", exchange="NFO", instrument="FUT", productType="M").symbol == "NIFTY1!"


def test_cancel_legs_take_the_prefix_off_too() -> None:
    """cancel_order on `NSE:SBIN` cancels what was placed as SBIN on NSE."""
    parsed = parse_alert(alert({"symbol": "NSE:SBIN"}, alert_type="cancel_order"), make_converter())

    assert isinstance(parsed, CancelAlert)
    assert (parsed.legs[0].symbol, parsed.legs[0].exchange) == ("SBIN", Exchange.NSE)
    with pytest.raises(InvalidAlertError) as caught:
        parse_alert(alert({"symbol": "BSE:SBIN", "exchange": "NSE"}, alert_type="cancel_order"), make_converter())
    assert caught.value.errors == ["order_legs[0].symbol: exchange prefix BSE of BSE:SBIN contradicts exchange NSE"]


async def test_paper_keeps_one_position_for_prefixed_and_plain_symbols(
    make_client: ClientFactory, config: Config
) -> None:
    """Bought as `NSE:RELIANCE`, then as RELIANCE: one paper position of 15, and the results say RELIANCE."""
    client = await make_client(config)

    first = await client.post("/webhook", json=alert(leg(symbol="NSE:RELIANCE", quantity="10", price="2900")))
    second = await client.post("/webhook", json=alert(leg(symbol="RELIANCE", quantity="5", price="2900")))

    assert (first.status, second.status) == (200, 200)
    assert (await first.json())["results"][0]["symbol"] == "RELIANCE"
    paper: Any = client.app[BROKERS]["paper"]
    assert [(p.contract.exchange.value, p.contract.symbol, p.net_quantity) for p in await paper.positions()] == [
        ("NSE", "RELIANCE", 15)
    ]


async def test_a_contradicting_prefix_is_a_422_and_nothing_is_sent(make_client: ClientFactory, config: Config) -> None:
    """Over HTTP: 422 "Payload validation error" naming both exchanges; the paper account has no order."""
    client = await make_client(config)

    response = await client.post("/webhook", json=alert(leg(symbol="BSE:RELIANCE", exchange="NSE")))

    assert response.status == 422
    body = await response.json()
    assert body["message"] == "Payload validation error"
    assert body["errors"] == ["order_legs[0].symbol: exchange prefix BSE of BSE:RELIANCE contradicts exchange NSE"]
    paper: Any = client.app[BROKERS]["paper"]
    assert await paper.orders() == []
