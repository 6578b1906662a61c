"""Lots or units, end to end: an alert over HTTP, tvbridge's conversion, the real dhanhq client, the fake Dhan API.

`[accounts.NAME] quantity_unit = "lots"` is Dhan's own TradingView panel (`"quantity": "1"` on NIFTY is one lot of
65); `"units"` (the default) is the guide. Whatever the alert counted, Dhan receives units, risk limits count units
and the response, the journal and the order log show the units sent.
"""

from __future__ import annotations

import csv
from datetime import date
from typing import TYPE_CHECKING, Any, cast

import pytest
from dhan_support import leg as dhan_leg
from dhan_support import request
from fake_dhan import CLIENT_ID, TOKEN
from helpers import alert, leg, with_accounts

from tvbridge.broker import BrokerRejectedError, InstrumentInfo, OrderState
from tvbridge.errors import PluginError
from tvbridge.lots import in_units
from tvbridge.models import Exchange, Instrument, PositionAction, Product, QuantityUnit
from tvbridge.registry import build_brokers

if TYPE_CHECKING:
    from pathlib import Path

    from fake_dhan import FakeDhan
    from helpers import ClientFactory

    from tvbridge.broker import Broker
    from tvbridge.config import Config
    from tvbridge_brokers.dhan import DhanBroker

NIFTY_DEC_FUT: dict[str, Any] = {
    "exchange": "NFO",
    "symbol": "NIFTY",
    "instrument": "FUT",
    "expiry_date": "2026-12-29",
    "productType": "M",
}
"""An explicit expiry: the HTTP tests run on the real clock, and `NIFTY1!` would move with it."""


def dhan_account(fake: FakeDhan, master: Path, **keys: Any) -> dict[str, Any]:
    return {
        "broker": "dhan",
        "client_id": CLIENT_ID,
        "access_token": TOKEN,
        "live": True,
        "base_url": fake.base_url,
        "instruments_path": str(master),
        "max_orders_per_s": 1000,
        **keys,
    }


async def post(client: Any, *legs: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/webhook", json=alert(*legs))
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


def order_log_quantities(config: Config) -> list[str]:
    with config.data_path("webhook_orders.csv").open(newline="") as f:
        return [row["quantity"] for row in csv.DictReader(f)]


async def test_a_lots_account_sends_one_nifty_lot_as_65_units(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_master: Path
) -> None:
    """Dhan's panel JSON, `"quantity": "1"` on a NIFTY future: Dhan receives 65, and the response, the journal
    and the order log all say 65, the units sent."""
    config = with_accounts(config, {"dhan": dhan_account(fake_dhan, dhan_master, quantity_unit="lots")})
    client = await make_client(config)

    body = await post(client, leg(**NIFTY_DEC_FUT, quantity="1"))

    (placed,) = fake_dhan.placed()
    assert (placed["securityId"], placed["exchangeSegment"], placed["quantity"]) == ("52175", "NSE_FNO", 65)
    (result,) = body["results"]
    assert (result["status"], result["quantity"]) == ("success", "65")
    assert order_log_quantities(config) == ["65"]
    token = config.data_path("admin_token.txt").read_text().strip()
    record = await (
        await client.get(f"/alerts/{body['alert_id']}", headers={"Authorization": f"Bearer {token}"})
    ).json()
    assert record["legs"][0]["result"]["quantity"] == "65"


async def test_lots_on_an_option_ticker_and_on_equity(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_master: Path
) -> None:
    """Two lots of `NSE:NIFTY261229C24000` (no exchange, no strike keys) are 130 units of the 29 Dec 24000 CE;
    10 lots of `NSE:RELIANCE` are 10 shares (an equity lot is 1)."""
    config = with_accounts(config, {"dhan": dhan_account(fake_dhan, dhan_master, quantity_unit="lots")})
    client = await make_client(config)
    option = leg(symbol="NSE:NIFTY261229C24000", instrument="OPT", productType="M", quantity="2", sort_order="1")
    del option["exchange"]

    body = await post(client, option, leg(symbol="NSE:RELIANCE", quantity="10", sort_order="2"))

    assert [(p["securityId"], p["quantity"]) for p in fake_dhan.placed()] == [("43201", 130), ("2885", 10)]
    assert [(r["symbol"], r["quantity"]) for r in body["results"]] == [("NIFTY", "130"), ("RELIANCE", "10")]


async def test_units_is_the_default_and_a_part_lot_stays_refused(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_master: Path
) -> None:
    """Without `quantity_unit`, 65 is one lot and 1 is refused naming the lot size: nothing of it is sent."""
    config = with_accounts(config, {"dhan": dhan_account(fake_dhan, dhan_master)})
    config = attrs_with_continue(config)
    client = await make_client(config)

    body = await post(
        client, leg(**NIFTY_DEC_FUT, quantity="65", sort_order="1"), leg(**NIFTY_DEC_FUT, quantity="1", sort_order="2")
    )

    assert [p["quantity"] for p in fake_dhan.placed()] == [65]
    assert [(r["status"], r["quantity"]) for r in body["results"]] == [("success", "65"), ("failed", "1")]
    assert body["results"][1]["message"] == (
        "quantity 1: must be a whole number of lots of 65 units for NIFTY-Dec2026-FUT (quantity is in units: 65 = 1"
        ' lot; an account or leg with quantity_unit = "lots" counts lots)'
    )


def attrs_with_continue(config: Config) -> Config:
    import attrs  # noqa: PLC0415 - only this helper evolves the alerts table

    return attrs.evolve(config, alerts=attrs.evolve(config.alerts, on_leg_failure="continue"))


async def test_a_legs_quantity_unit_overrides_the_accounts(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_master: Path
) -> None:
    """On a units account a leg saying `"quantity_unit": "lots"` counts lots; on a lots account a leg saying
    `"units"` counts units. The key is known: no unknown-key warning."""
    config = with_accounts(
        config,
        {
            "dhan": dhan_account(fake_dhan, dhan_master),
            "panel": dhan_account(fake_dhan, dhan_master, quantity_unit="lots"),
        },
    )
    client = await make_client(config)

    says_lots = await post(client, leg(**NIFTY_DEC_FUT, quantity="2", quantity_unit="lots"))
    says_units = await post(client, leg(**NIFTY_DEC_FUT, quantity="130", quantity_unit="units"))
    says_nothing = await post(client, leg(**NIFTY_DEC_FUT, quantity="2"))

    def sent(body: dict[str, Any]) -> list[tuple[str, str, str]]:
        return sorted((r["account"], r["quantity"], r["status"]) for r in body["results"])

    assert sent(says_lots) == [("dhan", "130", "success"), ("panel", "130", "success")]
    assert sent(says_units) == [("dhan", "130", "success"), ("panel", "130", "success")]
    assert sent(says_nothing) == [("dhan", "2", "failed"), ("panel", "130", "success")]
    assert says_lots["warnings"] == []


async def test_risk_limits_count_units_not_lots(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_master: Path
) -> None:
    """max_qty_per_order = 100 on a lots account: 1 lot (65 units) passes, 2 lots (130 units) are refused with
    the units in the message, and Dhan never sees the second."""
    config = with_accounts(
        config, {"dhan": dhan_account(fake_dhan, dhan_master, quantity_unit="lots", max_qty_per_order=100)}
    )
    client = await make_client(config)

    one = await post(client, leg(**NIFTY_DEC_FUT, quantity="1"))
    two = await post(client, leg(**NIFTY_DEC_FUT, quantity="2"))

    assert one["results"][0]["status"] == "success"
    assert (two["results"][0]["status"], two["results"][0]["message"]) == (
        "failed",
        "risk: quantity 130 is over max_qty_per_order 100",
    )
    assert [p["quantity"] for p in fake_dhan.placed()] == [65]


async def test_lots_of_an_unknown_contract_fail_with_dhans_own_message(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_master: Path
) -> None:
    """The lot size of a typo cannot be read: the leg fails before sending with the master's help text."""
    config = with_accounts(config, {"dhan": dhan_account(fake_dhan, dhan_master, quantity_unit="lots")})
    client = await make_client(config)

    body = await post(client, leg(**{**NIFTY_DEC_FUT, "symbol": "NIFTI"}, quantity="1"))

    assert body["results"][0]["message"] == (
        "not sent: symbol NIFTI is not a known NSE futures underlying in the instrument master; closest matches: NIFTY"
    )
    assert fake_dhan.placed() == []


async def test_lots_need_a_broker_that_knows_lot_sizes(make_client: ClientFactory, config: Config) -> None:
    """A paper account without an instrument master cannot convert derivative lots: the leg fails naming the
    missing capability; equity lots (1 share each) still work there."""
    config = with_accounts(config, {"paper": {"broker": "paper", "quantity_unit": "lots"}})
    client = await make_client(config)

    body = await post(
        client, leg(symbol="INFY", quantity="3", price="1500", sort_order="1"), leg(**NIFTY_DEC_FUT, sort_order="2")
    )

    assert [(r["status"], r["quantity"]) for r in body["results"]] == [("success", "3"), ("failed", "10")]
    assert body["results"][1]["message"] == (
        "not sent: quantity_unit lots: this broker cannot tell the lot size of NIFTY (it does not declare the"
        " instrument_info capability; a paper account needs instruments_path): send the quantity in units"
    )


async def test_a_plugin_reporting_a_lot_size_below_one_has_the_lot_leg_refused(
    make_client: ClientFactory, config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A third-party broker whose `instrument_info()` reports a lot of 0 (the shipped masters never do): a lot
    cannot be turned into units, so the leg is refused with the lot size the broker gave, and nothing is sent
    (sending 0 units, or the lots as units, would be the wrong order)."""
    import tvbridge_testbrokers  # noqa: PLC0415 - the scripted test plugin, importable from tests/support

    async def zero(self: Any, leg: Any) -> InstrumentInfo:
        return InstrumentInfo(trading_symbol="NIFTY-Dec2026-FUT", lot_size=0)

    monkeypatch.setattr(tvbridge_testbrokers.ScriptedLotsBroker, "instrument_info", zero)
    config = with_accounts(config, {"sim": {"broker": "scripted", "lot_size": 65, "quantity_unit": "lots"}})
    client = await make_client(config)

    body = await post(client, leg(**NIFTY_DEC_FUT, quantity="1"))

    [result] = body["results"]
    assert (result["status"], result["message"]) == (
        "failed",
        "not sent: quantity_unit lots: the broker reports lot size 0 for NIFTY-Dec2026-FUT",
    )
    assert not config.data_path("scripted-sim.jsonl").exists()  # the broker received nothing


async def test_continuous_future_lots_resolve_to_the_nearest_contract(dhan_dry: DhanBroker) -> None:
    """`NIFTY1!` in lots, on the fixed exchange day: the lot size is the December future's, and the dry-run
    place_order carries 65 units of it."""
    one_lot = dhan_leg(
        exchange=Exchange.NFO, symbol="NIFTY1!", instrument=Instrument.FUTURE, quantity=1, product=Product.MARGIN
    )

    converted = await in_units(cast("Broker", dhan_dry), one_lot, QuantityUnit.LOTS)
    result = await dhan_dry.place(request(converted))

    assert (converted.quantity, converted.quantity_unit) == (65, QuantityUnit.UNITS)
    assert result.state is OrderState.DRY_RUN
    sent: Any = result.details["place_order"]
    assert (result.details["trading_symbol"], sent["quantity"]) == ("NIFTY-Dec2026-FUT", 65)


async def test_equity_and_exits_in_lots_reach_the_broker_as_units(dhan_dry: DhanBroker) -> None:
    """Equity lots are shares, and an exit closes the whole position: neither needs a lot size, and the leg the
    plugin receives says units (a plugin that reads `quantity_unit` must never see lots after conversion)."""
    for leg_in_lots in (dhan_leg(quantity=3), dhan_leg(quantity=3, manage_position=PositionAction.EXIT_ALL)):
        converted = await in_units(cast("Broker", dhan_dry), leg_in_lots, QuantityUnit.LOTS)
        assert (converted.quantity, converted.quantity_unit) == (3, QuantityUnit.UNITS)


async def test_instrument_info_refuses_what_place_refuses(dhan_dry: DhanBroker) -> None:
    """The lookup tvbridge converts with is `place()`'s own resolution: an expiry that does not exist is refused
    with the same words."""
    wrong = dhan_leg(
        exchange=Exchange.NFO,
        symbol="NIFTY",
        instrument=Instrument.FUTURE,
        expiry_date=date(2026, 12, 30),
        quantity=65,
        product=Product.MARGIN,
    )

    with pytest.raises(BrokerRejectedError) as by_lookup:
        await dhan_dry.instrument_info(wrong)
    with pytest.raises(BrokerRejectedError) as by_place:
        await dhan_dry.place(request(wrong))

    assert str(by_lookup.value) == str(by_place.value)
    assert str(by_lookup.value).startswith("expiry_date 2026-12-30: no NIFTY future expires that day")


def test_a_plugin_that_claims_instrument_info_without_the_method_does_not_start(config: Config) -> None:
    """Declaring the capability is a promise: a plugin that declares `instrument_info` and lacks the method is
    refused when the accounts are built, naming the account and the interface, not on a trader's first lot."""
    config = with_accounts(config, {"odd": {"broker": "scripted", "claims_instrument_info": True}})

    with pytest.raises(PluginError) as caught:
        build_brokers(config)

    assert str(caught.value) == (
        "accounts.odd: scripted: declares capabilities.instrument_info = True but has no instrument_info() method:"
        " implement it or leave instrument_info false"
    )
