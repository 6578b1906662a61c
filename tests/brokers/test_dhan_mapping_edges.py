"""The Dhan mapping's edges, found by mutation testing (docs/testing.md): each rule at its boundary, through the
real dhanhq client against the fake Dhan API. A refusal names the field and sends nothing; a leg just inside a
rule reaches Dhan as exactly this JSON."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from dhan_support import leg, request
from fake_dhan import CLIENT_ID, FakeDhan

from tvbridge.broker import BrokerRejectedError, BrokerUnsupportedError
from tvbridge.models import Exchange, Instrument, OptionType, OrderType, PositionAction, Product, Side
from tvbridge_brokers.dhan.mapping import segment_for

if TYPE_CHECKING:
    from tvbridge_brokers.dhan import DhanBroker

BASE: dict[str, Any] = {
    "dhanClientId": CLIENT_ID,
    "transactionType": "BUY",
    "exchangeSegment": "NSE_EQ",
    "productType": "CNC",
    "orderType": "MARKET",
    "validity": "DAY",
    "securityId": "2885",
    "quantity": 10,
    "disclosedQuantity": 0,
    "price": 0.0,
    "afterMarketOrder": False,
    "boProfitValue": None,
    "boStopLossValue": None,
    "triggerPrice": 0.0,
    "correlationId": "A1B2C3-1",
}
NIFTY_OPTION: dict[str, Any] = {
    "exchange": Exchange.NFO,
    "symbol": "NIFTY",
    "instrument": Instrument.OPTION,
    "option_type": OptionType.CALL,
    "strike_price": "24000",
    "expiry_date": date(2026, 12, 29),
    "quantity": 65,
    "product": Product.INTRADAY,
}
SL = {"order_type": OrderType.STOP_LOSS, "price": "100"}

REFUSED: dict[str, tuple[dict[str, Any], type[Exception], str]] = {
    "blank symbol": ({"symbol": "   "}, BrokerRejectedError, "symbol: empty"),
    "option without CE/PE": (
        {**NIFTY_OPTION, "option_type": None},
        BrokerRejectedError,
        "option_type: required for options (CE or PE)",
    ),
    "strike 0": (
        {**NIFTY_OPTION, "strike_price": "0"},
        BrokerRejectedError,
        "strike_price: required for options and > 0",
    ),
    "strike 0.5 (no such contract)": (
        {**NIFTY_OPTION, "strike_price": "0.5"},
        BrokerRejectedError,
        "strike_price 0.5: no NIFTY CE strike on 2026-12-29 (nearest listed: 24000, 24500)",
    ),
    "quantity 0": ({"quantity": 0}, BrokerRejectedError, "quantity 0: must be a positive whole number"),
    "price NaN": ({"order_type": OrderType.LIMIT, "price": "NaN"}, BrokerRejectedError, "price NaN: not a number"),
    "trigger 0": (
        {"order_type": OrderType.STOP_LOSS_MARKET, "trigger_price": "0"},
        BrokerRejectedError,
        "triggerPrice: required and > 0 for orderType SL-M",
    ),
    "trigger NaN": (
        {"order_type": OrderType.STOP_LOSS_MARKET, "trigger_price": "NaN"},
        BrokerRejectedError,
        "triggerPrice: required and > 0 for orderType SL-M",
    ),
    "buy SL triggering above its price": (
        {**SL, "trigger_price": "100.05"},
        BrokerRejectedError,
        "triggerPrice 100.05: a buy stop-loss triggers at or below its price 100",
    ),
    "sell SL triggering below its price": (
        {**SL, "side": Side.SELL, "trigger_price": "99.95"},
        BrokerRejectedError,
        "triggerPrice 99.95: a sell stop-loss triggers at or above its price 100",
    ),
    "unknown AMO time": (
        {"amo_time": "later"},
        BrokerRejectedError,
        "amoTime 'later': must be OPEN, OPEN_30 or OPEN_60",
    ),
    "MARGIN on equity": (
        {"product": Product.MARGIN},
        BrokerRejectedError,
        "productType M (MARGIN) is not valid for equity: use C (CNC), I (INTRADAY), MTF (MTF)",
    ),
    "EXIT_ALL unresolved": (
        {"manage_position": PositionAction.EXIT_ALL},
        BrokerUnsupportedError,
        (
            "manage_position EXIT_ALL reached the dhan broker unresolved: tvbridge turns it into the closing order"
            " before place(); nothing was sent"
        ),
    ),
}


@pytest.mark.parametrize(("changes", "error", "message"), REFUSED.values(), ids=REFUSED.keys())
async def test_a_leg_just_outside_a_rule_is_refused_with_the_field_named(
    dhan_live: DhanBroker, fake_dhan: FakeDhan, changes: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Just outside each rule: refused before sending, with the message the trader reads; Dhan got nothing."""
    with pytest.raises(error) as caught:
        await dhan_live.place(request(leg(**changes)))
    assert str(caught.value) == message
    assert fake_dhan.placed() == []


ACCEPTED: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "a limit price under 1": (
        {"order_type": OrderType.LIMIT, "price": "0.5"},
        {"orderType": "LIMIT", "price": 0.5},
    ),
    "an SL-M trigger under 1": (
        {"order_type": OrderType.STOP_LOSS_MARKET, "trigger_price": "0.5"},
        {"orderType": "STOP_LOSS_MARKET", "triggerPrice": 0.5},
    ),
    "a buy SL triggering at its price": (
        {**SL, "trigger_price": "100"},
        {"orderType": "STOP_LOSS", "price": 100.0, "triggerPrice": 100.0},
    ),
    "a sell SL triggering at its price": (
        {**SL, "side": Side.SELL, "trigger_price": "100"},
        {"transactionType": "SELL", "orderType": "STOP_LOSS", "price": 100.0, "triggerPrice": 100.0},
    ),
    "a sell SL triggering above its price": (
        {**SL, "side": Side.SELL, "trigger_price": "100.5"},
        {"transactionType": "SELL", "orderType": "STOP_LOSS", "price": 100.0, "triggerPrice": 100.5},
    ),
    "a limit order's stray trigger is not sent": (
        {"order_type": OrderType.LIMIT, "price": "100", "trigger_price": "99"},
        {"orderType": "LIMIT", "price": 100.0, "triggerPrice": 0.0},
    ),
}


@pytest.mark.parametrize(("changes", "expected"), ACCEPTED.values(), ids=ACCEPTED.keys())
async def test_a_leg_just_inside_a_rule_reaches_dhan_as_is(
    dhan_live: DhanBroker, fake_dhan: FakeDhan, changes: dict[str, Any], expected: dict[str, Any]
) -> None:
    """Just inside each rule: Dhan receives exactly this JSON."""
    await dhan_live.place(request(leg(**changes)))
    assert fake_dhan.placed() == [{**BASE, **expected}]


def test_derivatives_on_bse_go_to_bse_fno() -> None:
    """Futures and options on BSE or BFO are Dhan's `BSE_FNO` segment, as Dhan spells it."""
    for exchange in (Exchange.BSE, Exchange.BFO):
        for instrument in (Instrument.FUTURE, Instrument.OPTION, Instrument.CALL, Instrument.PUT):
            segment = segment_for(exchange, instrument)
            assert (segment.exchange, segment.dhan) == ("BSE", "BSE_FNO")


async def test_listings_read_a_continuous_future_as_its_underlying(dhan_dry: DhanBroker) -> None:
    """`NIFTY1!` (TradingView's continuous future) lists NIFTY's own futures expiries: the relative expiries
    (`current_month`...) of a leg naming it are chosen from the real contracts, not from nothing."""
    nifty = await dhan_dry.listings(leg(exchange=Exchange.NFO, symbol="NIFTY", instrument=Instrument.FUTURE))
    continuous = await dhan_dry.listings(leg(exchange=Exchange.NFO, symbol="NIFTY1!", instrument=Instrument.FUTURE))
    assert nifty.expiries
    assert continuous == nifty


async def test_listings_of_a_ce_leg_without_option_type_give_the_calls_strikes(dhan_dry: DhanBroker) -> None:
    """An option leg named by its instrument (`CE`) and an expiry, with no `option_type`, lists that expiry's call
    strikes, as the same leg with `option_type = CE` does (the ATM strike is picked from them)."""
    base = leg(exchange=Exchange.NFO, symbol="NIFTY", instrument=Instrument.OPTION)
    expiry = (await dhan_dry.listings(base)).expiries[0]
    by_instrument = await dhan_dry.listings(
        leg(exchange=Exchange.NFO, symbol="NIFTY", instrument=Instrument.CALL, expiry_date=expiry)
    )
    by_option_type = await dhan_dry.listings(attrs.evolve(base, expiry_date=expiry, option_type=OptionType.CALL))
    assert by_option_type.strikes
    assert by_instrument == by_option_type


async def test_listings_of_an_equity_leg_are_refused_naming_why(dhan_dry: DhanBroker) -> None:
    with pytest.raises(BrokerRejectedError) as refused:
        await dhan_dry.listings(leg(symbol="INFY"))
    assert str(refused.value) == "instrument EQ: only futures and options have expiries and strikes"
