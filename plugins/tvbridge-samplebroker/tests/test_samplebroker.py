"""The sample plugin against the fake SampleX API on 127.0.0.1: settings, orders, errors, unknown outcomes."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from tvbridge_samplebroker import SampleBroker
from tvbridge_samplebroker.fake_api import FakeVenue, serve

from tvbridge.broker import (
    BrokerAuthError,
    BrokerContext,
    BrokerRejectedError,
    BrokerUnavailableError,
    BrokerUnknownOutcomeError,
    CancelRequest,
    OrderRequest,
    OrderState,
    SettingsError,
)
from tvbridge.models import CancelLeg, Exchange, Instrument, OrderLeg, OrderType, Product, Side

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


def order(cid: str = "A1-1", **overrides: Any) -> OrderRequest:
    fields: dict[str, Any] = {
        "side": Side.BUY,
        "order_type": OrderType.MARKET,
        "quantity": 5,
        "exchange": Exchange.NSE,
        "symbol": "INFY",
        "instrument": Instrument.EQUITY,
        "product": Product.CNC,
    }
    fields.update(overrides)
    return OrderRequest(client_order_id=cid, alert_id="A1", leg_number=1, leg=OrderLeg(**fields))


@pytest.fixture
async def venue() -> AsyncIterator[tuple[FakeVenue, str]]:
    async with serve() as running:
        yield running


@pytest.fixture
async def broker(venue: tuple[FakeVenue, str], tmp_path: Path) -> AsyncIterator[SampleBroker]:
    fake, url = venue
    b = SampleBroker.from_settings(
        {"base_url": url, "api_key": fake.api_key, "timeout_s": 0.5}, BrokerContext(account="s", data_dir=tmp_path)
    )
    await b.start()
    yield b
    await b.aclose()


def test_settings_errors_name_every_key(tmp_path: Path) -> None:
    """Unknown keys, wrong types and bad URLs are refused with the key they concern."""
    ctx = BrokerContext(account="s", data_dir=tmp_path)
    with pytest.raises(SettingsError) as info:
        SampleBroker.from_settings({"base_url": "http://x", "api_kye": "k", "timeout_s": "soon"}, ctx)
    assert dict(info.value.problems).keys() == {"api_kye", "timeout_s"}
    with pytest.raises(SettingsError, match=r"base_url: must be an http\(s\) URL"):
        SampleBroker.from_settings({"base_url": "ftp://x"}, ctx)


def test_api_key_is_not_in_repr(tmp_path: Path) -> None:
    """The api key never reaches a log line through a repr of the settings."""
    b = SampleBroker.from_settings(
        {"base_url": "http://x", "api_key": "hunter2"}, BrokerContext(account="s", data_dir=tmp_path)
    )
    assert "hunter2" not in repr(b._settings)  # noqa: SLF001 - the repr is what a log line would show


async def test_market_order_fills_and_is_found_by_client_order_id(broker: SampleBroker) -> None:
    """A market order is filled at the venue's price and lookup() finds it by our client order id."""
    result = await broker.place(order())
    assert result.state is OrderState.FILLED
    assert result.average_price == Decimal(100)
    found = await broker.lookup("A1-1")
    assert found is not None
    assert found.order_id == result.order_id
    assert await broker.lookup("nope") is None


async def test_place_is_idempotent(broker: SampleBroker, venue: tuple[FakeVenue, str]) -> None:
    """Placing the same client order id twice yields one order at the venue."""
    first = await broker.place(order())
    second = await broker.place(order())
    assert first.order_id == second.order_id
    assert len(venue[0].orders) == 1


async def test_rejection_is_typed(broker: SampleBroker) -> None:
    """A venue refusal is a BrokerRejectedError carrying the venue's reason."""
    with pytest.raises(BrokerRejectedError, match="REJECTME is not tradeable"):
        await broker.place(order(symbol="REJECTME"))


async def test_timeout_is_an_unknown_outcome_resolved_by_lookup(broker: SampleBroker) -> None:
    """No answer in time means unknown outcome, and the order that did arrive is found by lookup()."""
    with pytest.raises(BrokerUnknownOutcomeError):
        await broker.place(order(symbol="SLOWME"))
    found = await broker.lookup("A1-1")
    assert found is not None


async def test_dropped_connection_is_an_unknown_outcome(broker: SampleBroker) -> None:
    """A connection closed after sending is an unknown outcome, not a rejection."""
    with pytest.raises(BrokerUnknownOutcomeError):
        await broker.place(order(symbol="DROPME"))
    assert await broker.lookup("A1-1") is not None


async def test_busy_venue_is_unavailable(broker: SampleBroker, venue: tuple[FakeVenue, str]) -> None:
    """A 503 before the order is recorded is transient: BrokerUnavailableError, nothing placed."""
    venue[0].busy = True
    with pytest.raises(BrokerUnavailableError):
        await broker.place(order())
    assert venue[0].orders == {}


async def test_cancel_by_order_id_and_by_symbol(broker: SampleBroker) -> None:
    """A resting limit order is cancelled by its id; by symbol, every open order of ours on it is."""
    resting = await broker.place(order(order_type=OrderType.LIMIT, price=Decimal(1)))
    assert resting.state is OrderState.OPEN
    cancelled = await broker.cancel(
        CancelRequest(alert_id="A2", leg_number=1, leg=CancelLeg(order_id=resting.order_id))
    )
    assert [c.state for c in cancelled] == [OrderState.CANCELLED]
    await broker.place(order("A3-1", order_type=OrderType.LIMIT, price=Decimal(1)))
    await broker.place(order("A3-2", order_type=OrderType.STOP_LOSS_MARKET, trigger_price=Decimal(90)))
    by_symbol = await broker.cancel(CancelRequest(alert_id="A4", leg_number=1, leg=CancelLeg(symbol="INFY")))
    assert len(by_symbol) == 2
    with pytest.raises(BrokerRejectedError, match="cannot be cancelled"):
        await broker.cancel(CancelRequest(alert_id="A5", leg_number=1, leg=CancelLeg(order_id=resting.order_id)))


async def test_wrong_api_key_fails_start(venue: tuple[FakeVenue, str], tmp_path: Path) -> None:
    """A refused api key stops the account at start with BrokerAuthError naming the account."""
    b = SampleBroker.from_settings(
        {"base_url": venue[1], "api_key": "wrong"}, BrokerContext(account="s", data_dir=tmp_path)
    )
    with pytest.raises(BrokerAuthError, match="account s: SampleX refused the api key"):
        await b.start()


async def test_health_reports_an_unreachable_venue(tmp_path: Path) -> None:
    """An unreachable venue stops the start with BrokerUnavailableError (nothing listens on port 9)."""
    b = SampleBroker.from_settings({"base_url": "http://127.0.0.1:9"}, BrokerContext(account="s", data_dir=tmp_path))
    with pytest.raises(BrokerUnavailableError, match="unreachable"):
        await b.start()
