"""Positions, open orders, EXIT_ALL and flatten on Dhan: the real dhanhq client against the fake Dhan API, through
the real tvbridge app (webhook, executor, journal, order log) where the behaviour is tvbridge's."""

from __future__ import annotations

import asyncio
import csv
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import pytest
from dhan_support import leg as dhan_leg
from fake_dhan import Misbehave
from helpers import alert, leg, with_accounts

from tvbridge.broker import ContractId, OpenOrder, OrderState, Position
from tvbridge.keys import CREDENTIALS
from tvbridge.models import Exchange, Instrument, Product, Side

if TYPE_CHECKING:
    from dhan_support import MakeDhan
    from fake_dhan import FakeDhan
    from helpers import ClientFactory

    from tvbridge.config import Config
    from tvbridge_brokers.dhan import DhanBroker

NIFTY_DEC = "52175"  # NIFTY-Dec2026-FUT in the sample master, lot 65


def exit_leg(**overrides: Any) -> dict[str, Any]:
    """An EXIT_ALL leg as a trader writes it: no quantity (the position decides), any side."""
    body = {**leg(**overrides), "manage_position": "EXIT_ALL"}
    body.pop("quantity", None)
    if "quantity" in overrides:
        body["quantity"] = overrides["quantity"]
    return body


def on_dhan(config: Config, settings: dict[str, object]) -> Config:
    return with_accounts(config, {"dhan": {"broker": "dhan", **settings}})


def admin(client: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {client.app[CREDENTIALS].admin_token}"}


def csv_rows(config: Config) -> list[dict[str, str]]:
    with config.data_path(config.order_log.file).open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


async def post(client: Any, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/webhook", json=body)
    assert response.status == 200, await response.text()
    answer: dict[str, Any] = await response.json()
    return answer


# the plugin interface


async def test_positions_map_net_quantity_per_security_id_and_product(
    fake_dhan: FakeDhan, dhan_live: DhanBroker
) -> None:
    """GET /positions rows become signed Positions with the contract an alert names (the master turns the
    security id back into underlying and expiry); a closed row is not listed."""
    fake_dhan.set_position("2885", 10, trading_symbol="RELIANCE", average=2900.5)
    fake_dhan.set_position("2885", -3, product="INTRADAY", trading_symbol="RELIANCE", average=2910.0)
    fake_dhan.set_position(NIFTY_DEC, -130, segment="NSE_FNO", product="MARGIN", trading_symbol="NIFTY-Dec2026-FUT")
    fake_dhan.set_position("1594", 0, trading_symbol="INFY")

    positions = await dhan_live.positions()

    assert sorted((p.contract.describe(), p.product, p.net_quantity, p.average_price) for p in positions) == [
        ("NFO NIFTY FUT 2026-12-29", Product.MARGIN, -130, None),
        ("NSE RELIANCE", Product.CNC, 10, Decimal("2900.5")),
        ("NSE RELIANCE", Product.INTRADAY, -3, Decimal(2910)),
    ]
    nifty = next(p for p in positions if p.contract.security_id == NIFTY_DEC)
    assert nifty.contract == ContractId(
        exchange=Exchange.NFO,
        symbol="NIFTY",
        instrument=Instrument.FUTURE,
        expiry_date=nifty.contract.expiry_date,
        security_id=NIFTY_DEC,
        trading_symbol="NIFTY-Dec2026-FUT",
    )
    assert all(isinstance(p, Position) for p in positions)


async def test_positions_of_a_leg_are_those_of_the_security_id_it_resolves_to(
    fake_dhan: FakeDhan, dhan_live: DhanBroker
) -> None:
    """`positions(leg)` resolves the leg as place() does: NIFTY1! on 2026-11-25 is December's future, so the
    December position is found and January's is not."""
    fake_dhan.set_position(NIFTY_DEC, 65, segment="NSE_FNO", product="MARGIN")
    fake_dhan.set_position("52181", 130, segment="NSE_FNO", product="MARGIN")
    fake_dhan.set_position("2885", 10)

    found = await dhan_live.positions(dhan_leg(symbol="NIFTY1!", exchange=Exchange.NFO, instrument=Instrument.FUTURE))

    assert [(p.contract.security_id, p.net_quantity) for p in found] == [(NIFTY_DEC, 65)]


async def test_open_orders_are_the_cancellable_ones_with_their_state(
    fake_dhan: FakeDhan, dhan_live: DhanBroker
) -> None:
    """GET /orders rows still open (PENDING, TRANSIT, PART_TRADED) become OpenOrders with Dhan's state; traded,
    cancelled and rejected ones are not listed."""
    pending = fake_dhan.add_order(securityId="2885", quantity=5, price=2800.0, correlationId="abc-1")
    stop = fake_dhan.add_order(
        securityId="1594", transactionType="SELL", orderType="STOP_LOSS_MARKET", triggerPrice=1400.0
    )
    part = fake_dhan.add_order(securityId="2885", orderStatus="PART_TRADED", quantity=10, filledQty=4)
    for status in ("TRADED", "CANCELLED", "REJECTED"):
        fake_dhan.add_order(securityId="2885", orderStatus=status)

    orders = {o.order_id: o for o in await dhan_live.open_orders()}

    assert set(orders) == {pending, stop, part}
    assert all(isinstance(o, OpenOrder) for o in orders.values())
    assert (orders[pending].state, orders[pending].side, orders[pending].quantity) == (OrderState.OPEN, Side.BUY, 5)
    assert orders[pending].client_order_id == "abc-1"
    assert orders[pending].contract.symbol == "RELIANCE"
    assert (orders[stop].state, orders[stop].side) == (OrderState.TRIGGER_PENDING, Side.SELL)
    assert (orders[part].state, orders[part].filled_quantity) == (OrderState.PARTIALLY_FILLED, 4)


async def test_a_position_dhan_cannot_read_is_an_unavailable_error(fake_dhan: FakeDhan, dhan_live: DhanBroker) -> None:
    """An HTML page instead of positions is not "flat": it raises, so an exit is never sized from nothing."""
    from tvbridge.broker import BrokerUnavailableError  # noqa: PLC0415 - only this test needs it

    fake_dhan.next_reply("positions", Misbehave.html())
    with pytest.raises(BrokerUnavailableError, match="cannot read Dhan's positions"):
        await dhan_live.positions()


async def test_dry_run_without_credentials_cannot_read_positions(
    make_dhan: MakeDhan, dhan_settings: dict[str, object]
) -> None:
    """A dry-run account without client_id and access_token says it cannot read positions, and why."""
    from tvbridge.broker import BrokerUnavailableError  # noqa: PLC0415 - only this test needs it

    settings = {k: v for k, v in dhan_settings.items() if k not in {"client_id", "access_token"}}
    broker = await make_dhan({**settings, "live": False})
    with pytest.raises(BrokerUnavailableError, match="no client_id and access_token"):
        await broker.positions()


# EXIT_ALL through the webhook


async def test_exit_all_sells_a_long_of_10_once_and_records_what_was_sent(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_settings: dict[str, object]
) -> None:
    """Long 10 RELIANCE (CNC): EXIT_ALL (sent as a buy, without quantity) places one SELL of 10; the response,
    the order log row and the journal show S and 10, not the alert's side."""
    config = on_dhan(config, dhan_settings)
    fake_dhan.set_position("2885", 10, trading_symbol="RELIANCE")
    client = await make_client(config)

    body = await post(client, alert(exit_leg(transactionType="B")))

    [result] = body["results"]
    assert (result["status"], result["transaction"], result["quantity"]) == ("success", "S", "10"), result
    assert "EXIT_ALL closes the long position of 10" in result["message"]
    [sent] = fake_dhan.placed()
    assert (sent["transactionType"], sent["quantity"], sent["securityId"], sent["productType"]) == (
        "SELL",
        10,
        "2885",
        "CNC",
    )
    [row] = csv_rows(config)
    assert (row["transaction"], row["quantity"], row["order_id"]) == ("S", "10", result["order_id"])
    stored = await (await client.get(f"/alerts/{body['alert_id']}", headers=admin(client))).json()
    assert stored["legs"][0]["result"]["quantity"] == "10"
    assert stored["legs"][0]["result"]["transaction"] == "S"


async def test_exit_all_buys_back_a_short_in_the_legs_product_only(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_settings: dict[str, object]
) -> None:
    """Short 130 NIFTY December future in MARGIN and long 65 intraday: an EXIT_ALL in M buys 130 and leaves the
    intraday position alone; the alert's quantity (65) is ignored."""
    config = on_dhan(config, dhan_settings)
    fake_dhan.set_position(NIFTY_DEC, -130, segment="NSE_FNO", product="MARGIN")
    fake_dhan.set_position(NIFTY_DEC, 65, segment="NSE_FNO", product="INTRADAY")
    client = await make_client(config)
    nifty = {"exchange": "NFO", "symbol": "NIFTY", "instrument": "FUT", "expiry_date": "2026-12-29"}

    body = await post(client, alert(exit_leg(transactionType="S", productType="M", quantity="65", **nifty)))

    [result] = body["results"]
    assert (result["status"], result["transaction"], result["quantity"]) == ("success", "B", "130"), result
    [sent] = fake_dhan.placed()
    assert (sent["transactionType"], sent["quantity"], sent["securityId"], sent["productType"]) == (
        "BUY",
        130,
        NIFTY_DEC,
        "MARGIN",
    )


async def test_a_second_exit_while_the_first_is_still_open_does_not_close_twice(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_settings: dict[str, object]
) -> None:
    """Dhan moves a position only when the exit fills. A second EXIT_ALL while the first SELL 10 is still
    PENDING (position still +10) sends nothing; after a partial fill (4 of 10, position 6) still nothing; a new
    long of 5 bought beside the open exit is closed alone (SELL 5)."""
    config = on_dhan(config, dhan_settings)
    fake_dhan.set_position("2885", 10)
    client = await make_client(config)

    first = await post(client, alert(exit_leg()))
    exit_id = first["results"][0]["order_id"]
    second = await post(client, alert({**exit_leg(), "meta": {"interval": "2"}}))

    [result] = second["results"]
    assert (result["status"], result["quantity"], result["order_id"]) == ("success", "0", None)
    assert f"already being closed by the open exit order(s) {exit_id}" in result["message"]
    assert len(fake_dhan.placed()) == 1

    fake_dhan.set_status(exit_id, "PART_TRADED", filledQty=4)
    fake_dhan.set_position("2885", 6)
    third = await post(client, alert({**exit_leg(), "meta": {"interval": "3"}}))
    assert third["results"][0]["quantity"] == "0"
    assert len(fake_dhan.placed()) == 1

    fake_dhan.set_position("2885", 11)
    fourth = await post(client, alert({**exit_leg(), "meta": {"interval": "4"}}))
    assert (fourth["results"][0]["transaction"], fourth["results"][0]["quantity"]) == ("S", "5")
    assert [(p["transactionType"], p["quantity"]) for p in fake_dhan.placed()] == [("SELL", 10), ("SELL", 5)]


async def test_exit_all_when_flat_sends_nothing_and_says_so(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_settings: dict[str, object]
) -> None:
    """No RELIANCE position in CNC (only intraday): nothing is sent, the answer says so, quantity 0 is logged."""
    config = on_dhan(config, dhan_settings)
    fake_dhan.set_position("2885", 10, product="INTRADAY")
    client = await make_client(config)

    body = await post(client, alert(exit_leg()))

    [result] = body["results"]
    assert (result["status"], result["quantity"], result["order_id"]) == ("success", "0", None)
    assert "nothing to close: no open position in NSE RELIANCE (C); EXIT_ALL sent no order" in result["message"]
    assert fake_dhan.placed() == []
    [row] = csv_rows(config)
    assert (row["quantity"], row["status"]) == ("0", "success")


async def test_exit_all_dry_run_shows_the_computed_order_and_sends_nothing(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_settings: dict[str, object]
) -> None:
    """Dry-run reads the position (a read sends no order) and answers test_mode with the SELL of 10 that would
    be placed; Dhan receives no order."""
    config = on_dhan(config, {**dhan_settings, "live": False})
    fake_dhan.set_position("2885", 10)
    client = await make_client(config)

    body = await post(client, alert(exit_leg()))

    [result] = body["results"]
    assert (result["status"], result["transaction"], result["quantity"]) == ("test_mode", "S", "10"), result
    assert '"transaction_type":"SELL"' in result["message"]
    assert '"quantity":10' in result["message"]
    assert fake_dhan.placed() == []
    assert {(r.method, r.path) for r in fake_dhan.requests} == {("GET", "/v2/positions")}


async def test_exit_all_that_cannot_read_the_position_sends_nothing(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_settings: dict[str, object]
) -> None:
    """Dhan's positions call fails (DH-904): the leg fails with the reason and no order is placed."""
    config = on_dhan(config, dhan_settings)
    fake_dhan.set_position("2885", 10)
    fake_dhan.next_reply("positions", Misbehave.error("DH-904"))
    client = await make_client(config)

    body = await post(client, alert(exit_leg()))

    [result] = body["results"]
    assert result["status"] == "failed"
    assert "not sent: the position to close could not be read" in result["message"]
    assert "DH-904" in result["message"]
    assert fake_dhan.placed() == []


# flatten


async def test_flatten_previews_then_cancels_and_closes_and_one_failure_does_not_stop_the_rest(
    make_client: ClientFactory, config: Config, fake_dhan: FakeDhan, dhan_settings: dict[str, object]
) -> None:
    """POST /admin/flatten shows the plan and sends nothing; with confirm it cancels both open orders (the
    first cancel is refused with DH-906, the second still goes) and closes both positions; every action is in
    the journal under the flatten's id and in the order log."""
    config = on_dhan(config, dhan_settings)
    first = fake_dhan.add_order(securityId="2885", quantity=5, price=2800.0)
    second = fake_dhan.add_order(securityId="1594", transactionType="SELL", quantity=2, price=1700.0)
    fake_dhan.set_position("2885", 10)
    fake_dhan.set_position(NIFTY_DEC, -65, segment="NSE_FNO", product="MARGIN")
    client = await make_client(config)

    preview = await (await client.post("/admin/flatten", json={"account": "dhan"}, headers=admin(client))).json()

    assert preview["done"] == []
    assert sorted(c["order_id"] for c in preview["plan"]["cancel"]) == sorted([first, second])
    assert sorted((c["side"], c["quantity"], c["contract"]) for c in preview["plan"]["close"]) == [
        ("B", 65, "NFO NIFTY FUT 2026-12-29"),
        ("S", 10, "NSE RELIANCE"),
    ]
    assert fake_dhan.placed() == []
    assert fake_dhan.cancels() == []

    fake_dhan.next_reply("cancel", Misbehave.error("DH-906"))
    response = await client.post("/admin/flatten", json={"account": "dhan", "confirm": True}, headers=admin(client))
    body = await response.json()

    assert response.status == 200
    assert body["status"] == "partial"
    assert sorted(fake_dhan.cancels()) == sorted([first, second])
    assert sorted((p["transactionType"], p["quantity"], p["securityId"]) for p in fake_dhan.placed()) == [
        ("BUY", 65, NIFTY_DEC),
        ("SELL", 10, "2885"),
    ]
    assert [r["status"] for r in body["results"]] == ["failed", "success", "success", "success"]
    assert "DH-906" in body["results"][0]["message"]
    flatten_id = body["alert_id"]
    assert flatten_id.startswith("F")
    stored = await (await client.get(f"/alerts/{flatten_id}", headers=admin(client))).json()
    assert stored["alert_type"] == "flatten"
    assert [leg_row["state"] for leg_row in stored["legs"]] == ["failed", "cancelled", "placed", "placed"]
    rows = [r for r in csv_rows(config) if r["alert_id"] == flatten_id]
    assert [(r["alert_type"], r["order_type"], r["status"]) for r in rows] == [
        ("flatten", "CANCEL", "failed"),
        ("flatten", "CANCEL", "success"),
        ("flatten", "MKT", "success"),
        ("flatten", "MKT", "success"),
    ]
    assert sorted((r["transaction"], r["quantity"]) for r in rows if r["order_type"] == "MKT") == [
        ("B", "65"),
        ("S", "10"),
    ]


async def test_flatten_cli_previews_then_acts_with_yes(
    config: Config, fake_dhan: FakeDhan, dhan_settings: dict[str, object], capsys: pytest.CaptureFixture[str]
) -> None:
    """`tvbridge flatten --account dhan` prints the plan and sends nothing; `--yes` cancels and closes, prints
    each action and the journal id, and writes the order log."""
    from tvbridge.commands.trading import main as trading_main  # noqa: PLC0415 - the CLI entry under test

    config = on_dhan(config, dhan_settings)
    order_id = fake_dhan.add_order(securityId="2885", quantity=5, price=2800.0)
    fake_dhan.set_position("2885", -4, product="INTRADAY")

    assert await asyncio.to_thread(trading_main, config, ["flatten", "--account", "dhan"]) == 0
    out = capsys.readouterr().out
    assert "account dhan: 1 order(s) to cancel, 1 position(s) to close" in out
    assert "close: BUY 4 NSE RELIANCE (I) at market" in out
    assert "nothing was done" in out
    assert (fake_dhan.placed(), fake_dhan.cancels()) == ([], [])

    assert await asyncio.to_thread(trading_main, config, ["flatten", "--account", "dhan", "--yes"]) == 0
    out = capsys.readouterr().out
    assert f"cancel {order_id}: success" in out
    assert "close BUY 4 NSE RELIANCE (I): success" in out
    assert "recorded as F" in out
    assert fake_dhan.cancels() == [order_id]
    [sent] = fake_dhan.placed()
    assert (sent["transactionType"], sent["quantity"], sent["productType"]) == ("BUY", 4, "INTRADAY")
    assert [r["alert_type"] for r in csv_rows(config)] == ["flatten", "flatten"]
