"""What Dhan receives for each kind of leg, through the real dhanhq client, and what the trader gets back."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING, Any

import pytest
from dhan_support import leg, request
from fake_dhan import CLIENT_ID, FakeDhan

from tvbridge.broker import BrokerRejectedError, BrokerUnsupportedError, OrderState
from tvbridge.models import Exchange, Instrument, OptionType, OrderType, Product, Side

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

CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "equity market": ({}, {}),
    "equity limit": (
        {
            "symbol": "INFY",
            "side": Side.SELL,
            "order_type": OrderType.LIMIT,
            "price": "1500.55",
            "product": Product.INTRADAY,
        },
        {
            "securityId": "1594",
            "transactionType": "SELL",
            "orderType": "LIMIT",
            "price": 1500.55,
            "productType": "INTRADAY",
        },
    ),
    "stop-loss with trigger": (
        {"symbol": "TCS", "order_type": OrderType.STOP_LOSS, "price": "4000", "trigger_price": "3990.5"},
        {"securityId": "11536", "orderType": "STOP_LOSS", "price": 4000.0, "triggerPrice": 3990.5},
    ),
    "stop-loss market ignores price": (
        {"side": Side.SELL, "order_type": OrderType.STOP_LOSS_MARKET, "price": "2810", "trigger_price": "2800"},
        {"transactionType": "SELL", "orderType": "STOP_LOSS_MARKET", "price": 0.0, "triggerPrice": 2800.0},
    ),
    "BSE equity": ({"exchange": Exchange.BSE}, {"securityId": "500325", "exchangeSegment": "BSE_EQ"}),
    "nearest unexpired NIFTY future, quantity in units": (
        {
            "exchange": Exchange.NFO,
            "symbol": "NIFTY",
            "instrument": Instrument.FUTURE,
            "quantity": 130,
            "product": Product.MARGIN,
        },
        {"securityId": "52175", "exchangeSegment": "NSE_FNO", "quantity": 130, "productType": "MARGIN"},
    ),
    "TradingView continuous ticker NIFTY2!": (
        {
            "exchange": Exchange.NFO,
            "symbol": "NIFTY2!",
            "instrument": Instrument.FUTURE,
            "quantity": 65,
            "product": Product.INTRADAY,
        },
        {"securityId": "52181", "exchangeSegment": "NSE_FNO", "quantity": 65, "productType": "INTRADAY"},
    ),
    "future by expiry date": (
        {
            "exchange": Exchange.NSE,
            "symbol": "banknifty",
            "instrument": Instrument.FUTURE,
            "quantity": 30,
            "product": Product.MARGIN,
            "expiry_date": date(2027, 1, 25),
        },
        {"securityId": "52195", "exchangeSegment": "NSE_FNO", "quantity": 30, "productType": "MARGIN"},
    ),
    "NIFTY call option": (
        {
            "exchange": Exchange.NFO,
            "symbol": "NIFTY",
            "instrument": Instrument.OPTION,
            "option_type": OptionType.CALL,
            "strike_price": "24000",
            "expiry_date": date(2026, 12, 29),
            "quantity": 65,
            "product": Product.INTRADAY,
            "order_type": OrderType.LIMIT,
            "price": "120.05",
        },
        {
            "securityId": "43201",
            "exchangeSegment": "NSE_FNO",
            "quantity": 65,
            "productType": "INTRADAY",
            "orderType": "LIMIT",
            "price": 120.05,
        },
    ),
    "guide-style PE instrument with details": (
        {
            "exchange": Exchange.NFO,
            "symbol": "BANKNIFTY",
            "instrument": Instrument.PUT,
            "strike_price": "52000.00",
            "expiry_date": date(2026, 12, 29),
            "quantity": 60,
            "product": Product.MARGIN,
            "side": Side.SELL,
        },
        {
            "securityId": "43302",
            "exchangeSegment": "NSE_FNO",
            "quantity": 60,
            "productType": "MARGIN",
            "transactionType": "SELL",
        },
    ),
    "BSE future": (
        {
            "exchange": Exchange.BFO,
            "symbol": "SENSEX",
            "instrument": Instrument.FUTURE,
            "quantity": 20,
            "product": Product.MARGIN,
        },
        {"securityId": "1120", "exchangeSegment": "BSE_FNO", "quantity": 20, "productType": "MARGIN"},
    ),
    "MCX future is sent in lots": (
        {
            "exchange": Exchange.MCX,
            "symbol": "CRUDEOIL",
            "instrument": Instrument.FUTURE,
            "quantity": 200,
            "product": Product.INTRADAY,
        },
        {"securityId": "447380", "exchangeSegment": "MCX_COMM", "quantity": 2, "productType": "INTRADAY"},
    ),
    "after-market order": (
        {"order_type": OrderType.LIMIT, "price": "2500", "amo_time": "open_30"},
        {"orderType": "LIMIT", "price": 2500.0, "afterMarketOrder": True, "amoTime": "OPEN_30"},
    ),
}


@pytest.mark.parametrize(("changes", "expected"), CASES.values(), ids=CASES.keys())
async def test_dhan_receives_the_exact_order_json(
    dhan_live: DhanBroker, fake_dhan: FakeDhan, changes: dict[str, Any], expected: dict[str, Any]
) -> None:
    """Each kind of leg reaches Dhan as exactly this JSON (security id from the master, mapped fields, our
    correlation id), and the trader gets Dhan's order id and its reported state, not an assumed fill."""
    result = await dhan_live.place(request(leg(**changes)))

    assert fake_dhan.placed() == [{**BASE, **expected}]
    assert result.order_id == next(iter(fake_dhan.orders))
    assert result.state is OrderState.PENDING
    assert result.message == f"Dhan order {result.order_id}: TRANSIT"
    assert result.client_order_id == "A1B2C3-1"


async def test_lookup_reports_dhans_state(dhan_live: DhanBroker, fake_dhan: FakeDhan) -> None:
    """lookup() by client order id returns Dhan's current state: a traded order reads filled with its price,
    a rejected one carries Dhan's reason; an unknown id is None."""
    placed = await dhan_live.place(request())
    assert placed.order_id is not None
    fake_dhan.set_status(placed.order_id, "TRADED", filledQty=10, averageTradedPrice=2890.5)

    traded = await dhan_live.lookup("A1B2C3-1")

    assert traded is not None
    assert (traded.state, traded.filled_quantity, str(traded.average_price)) == (OrderState.FILLED, 10, "2890.5")
    fake_dhan.set_status(placed.order_id, "REJECTED", omsErrorDescription="RMS: insufficient funds")
    rejected = await dhan_live.lookup("A1B2C3-1")
    assert rejected is not None
    assert rejected.state is OrderState.REJECTED
    assert rejected.message == f"Dhan order {placed.order_id}: REJECTED (RMS: insufficient funds)"
    assert await dhan_live.lookup("NEVER-SENT") is None


async def test_a_pending_stop_loss_reads_trigger_pending(dhan_live: DhanBroker) -> None:
    """Dhan's PENDING on a stop-loss order means the trigger has not been hit yet."""
    await dhan_live.place(request(leg(order_type=OrderType.STOP_LOSS_MARKET, trigger_price="2800")))

    found = await dhan_live.lookup("A1B2C3-1")

    assert found is not None
    assert found.state is OrderState.TRIGGER_PENDING


BAD_LEGS: dict[str, tuple[dict[str, Any], type[Exception], str]] = {
    "unknown symbol": (
        {"symbol": "RELIANC"},
        BrokerRejectedError,
        "symbol RELIANC is not a known NSE equity in the instrument master; closest matches: RELIANCE",
    ),
    "not a whole lot": (
        {
            "exchange": Exchange.NFO,
            "symbol": "NIFTY",
            "instrument": Instrument.FUTURE,
            "quantity": 1,
            "product": Product.MARGIN,
        },
        BrokerRejectedError,
        (
            "quantity 1: must be a whole number of lots of 65 units for NIFTY-Dec2026-FUT (quantity is in units: "
            '65 = 1 lot; an account or leg with quantity_unit = "lots" counts lots)'
        ),
    ),
    "PRE_OPEN AMO": (
        {"amo_time": "PRE_OPEN"},
        BrokerUnsupportedError,
        "amoTime PRE_OPEN is not supported by the Dhan client (dhanhq 2.3): use OPEN, OPEN_30 or OPEN_60",
    ),
    "limit without price": (
        {"order_type": OrderType.LIMIT},
        BrokerRejectedError,
        "price 0: must be > 0 for orderType LMT",
    ),
    "SL-M without trigger": (
        {"order_type": OrderType.STOP_LOSS_MARKET},
        BrokerRejectedError,
        "triggerPrice: required and > 0 for orderType SL-M",
    ),
    "option without expiry": (
        {
            "exchange": Exchange.NFO,
            "symbol": "NIFTY",
            "instrument": Instrument.OPTION,
            "option_type": OptionType.CALL,
            "strike_price": "24000",
            "quantity": 65,
            "product": Product.MARGIN,
        },
        BrokerRejectedError,
        "expiry_date: required for options (YYYY-MM-DD); the nearest expiry is not guessed",
    ),
    "CNC on a future": (
        {"exchange": Exchange.NFO, "symbol": "NIFTY", "instrument": Instrument.FUTURE, "quantity": 65},
        BrokerRejectedError,
        "productType C (CNC) is not valid for futures and options: use I (INTRADAY), M (MARGIN)",
    ),
    "equity on MCX": (
        {"exchange": Exchange.MCX},
        BrokerUnsupportedError,
        (
            "exchange MCX with instrument EQ: Dhan has no such segment (equity on NSE/BSE; futures and "
            "options on NSE/NFO, BSE/BFO, MCX)"
        ),
    ),
}


@pytest.mark.parametrize(("changes", "error", "message"), BAD_LEGS.values(), ids=BAD_LEGS.keys())
async def test_a_leg_that_cannot_be_mapped_is_refused_before_sending(
    dhan_live: DhanBroker, fake_dhan: FakeDhan, changes: dict[str, Any], error: type[Exception], message: str
) -> None:
    """A leg that cannot be mapped fails with a message naming the field, and Dhan receives no order."""
    with pytest.raises(error) as caught:
        await dhan_live.place(request(leg(**changes)))

    assert str(caught.value) == message
    assert fake_dhan.placed() == []


async def test_a_malformed_client_order_id_is_refused(dhan_live: DhanBroker, fake_dhan: FakeDhan) -> None:
    """The correlation id must be Dhan's format (<= 25 of [A-Za-z0-9_-]); otherwise nothing is sent."""
    with pytest.raises(BrokerRejectedError, match="is not a valid Dhan correlationId"):
        await dhan_live.place(request(cid="x" * 26))

    assert fake_dhan.placed() == []
