"""Dry-run (`live = false`, the guide's ENABLE_DHAN=false): everything up to the HTTP call, and nothing sent."""

from __future__ import annotations

from datetime import date
from typing import TYPE_CHECKING

import pytest
from dhan_support import leg, request

from tvbridge.broker import BrokerRejectedError, CancelRequest, OrderState
from tvbridge.models import CancelLeg, Exchange, Instrument, OptionType, Product

if TYPE_CHECKING:
    from dhan_support import MakeDhan
    from fake_dhan import FakeDhan

    from tvbridge_brokers.dhan import DhanBroker


async def test_dry_run_resolves_everything_and_sends_nothing(dhan_dry: DhanBroker, fake_dhan: FakeDhan) -> None:
    """The result says test mode and shows the resolved security id and the exact place_order arguments;
    the fake Dhan API saw no request at all (no token check either)."""
    result = await dhan_dry.place(request())

    kwargs = {
        "security_id": "2885",
        "exchange_segment": "NSE_EQ",
        "transaction_type": "BUY",
        "quantity": 10,
        "order_type": "MARKET",
        "product_type": "CNC",
        "price": 0.0,
        "trigger_price": 0.0,
        "after_market_order": False,
        "amo_time": "OPEN",
        "validity": "DAY",
        "tag": "A1B2C3-1",
    }
    assert result.state is OrderState.DRY_RUN
    assert result.order_id is None
    assert result.message == (
        'dry-run: not sent to Dhan; RELIANCE security_id 2885: place_order({"security_id":"2885",'
        '"exchange_segment":"NSE_EQ","transaction_type":"BUY","quantity":10,"order_type":"MARKET",'
        '"product_type":"CNC","price":0.0,"trigger_price":0.0,"after_market_order":false,"amo_time":"OPEN",'
        '"validity":"DAY","tag":"A1B2C3-1"})'
    )
    assert result.details == {"security_id": "2885", "trading_symbol": "RELIANCE", "lot_size": 1, "place_order": kwargs}
    assert fake_dhan.requests == []


async def test_dry_run_option_shows_the_resolved_contract(dhan_dry: DhanBroker, fake_dhan: FakeDhan) -> None:
    """An option leg in dry-run resolves to the contract's security id and Dhan's trading symbol."""
    option = leg(
        exchange=Exchange.NFO,
        symbol="NIFTY",
        instrument=Instrument.OPTION,
        option_type=OptionType.PUT,
        strike_price="24500",
        expiry_date=date(2026, 12, 29),
        quantity=130,
        product=Product.MARGIN,
    )

    result = await dhan_dry.place(request(option))

    assert result.details["security_id"] == "43204"
    assert result.details["trading_symbol"] == "NIFTY-Dec2026-24500-PE"
    assert fake_dhan.requests == []


async def test_dry_run_refuses_what_live_would_refuse(dhan_dry: DhanBroker, fake_dhan: FakeDhan) -> None:
    """Dry-run validates like live: a missing strike is refused with the same message, nothing sent."""
    option = leg(
        exchange=Exchange.NFO,
        symbol="NIFTY",
        instrument=Instrument.OPTION,
        option_type=OptionType.PUT,
        expiry_date=date(2026, 12, 29),
        quantity=65,
        product=Product.MARGIN,
    )

    with pytest.raises(BrokerRejectedError, match=r"^strike_price: required for options and > 0$"):
        await dhan_dry.place(request(option))
    assert fake_dhan.requests == []


async def test_dry_run_lookup_cancel_and_health_send_nothing(dhan_dry: DhanBroker, fake_dhan: FakeDhan) -> None:
    """lookup() returns the dry-run result, cancel() says what it would cancel, health() is ok; no requests."""
    placed = await dhan_dry.place(request())

    found = await dhan_dry.lookup("A1B2C3-1")
    cancelled = await dhan_dry.cancel(
        CancelRequest(alert_id="A9", leg_number=1, leg=CancelLeg(symbol="RELIANCE", exchange=Exchange.NSE))
    )
    health = await dhan_dry.health()

    assert found == placed
    assert [(r.state, r.message) for r in cancelled] == [
        (OrderState.DRY_RUN, "dry-run: would cancel the open orders placed for RELIANCE")
    ]
    assert health.ok
    assert health.detail.startswith("dry-run: nothing is sent to Dhan")
    assert fake_dhan.requests == []


async def test_dry_run_needs_no_credentials_and_falls_back_to_the_sample_master(
    make_dhan: MakeDhan, fake_dhan: FakeDhan
) -> None:
    """The guide's test mode works out of the box: no client id, no token, no downloaded master."""
    broker = await make_dhan({})

    result = await broker.place(request(leg(symbol="TCS")))

    assert result.details["security_id"] == "11536"
    assert not broker.capabilities.live
    assert fake_dhan.requests == []
