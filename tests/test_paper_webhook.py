"""The default install end to end: alerts become paper orders, positions and resting limits, across restarts."""

from __future__ import annotations

import csv
from typing import Any

from helpers import ClientFactory, alert, leg

from tvbridge.config import Config
from tvbridge.keys import BROKERS


async def post(client: Any, raw: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/webhook", json=raw)
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def test_market_order_fills_at_the_legs_price(make_client: ClientFactory, config: Config) -> None:
    client = await make_client(config)
    body = await post(client, alert(leg(symbol="INFY", quantity="4", price="1500")))
    (result,) = body["results"]
    assert (result["status"], result["account"], result["broker"]) == ("success", "paper", "paper")
    assert result["order_state"] == "filled"
    assert result["order_id"].startswith("PAPER-")
    with config.data_path("webhook_orders.csv").open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert (row["status"], row["order_id"], row["account"]) == ("success", result["order_id"], "paper")


async def test_limit_rests_until_a_later_alert_crosses_it(make_client: ClientFactory, config: Config) -> None:
    """A buy limit at 100 stays open; a later alert priced at 99 on the same symbol fills it."""
    client = await make_client(config)
    first = await post(client, alert(leg(symbol="TCS", orderType="LMT", price="100")))
    assert first["results"][0]["order_state"] == "open"
    limit_id = first["results"][0]["order_id"]
    paper: Any = client.app[BROKERS]["paper"]
    assert {o.order_id: o.state.value for o in await paper.orders()} == {limit_id: "open"}
    await post(client, alert(leg(symbol="TCS", transactionType="S", quantity="1", price="99")))
    states = {o.order_id: o.state.value for o in await paper.orders()}
    assert states[limit_id] == "filled"
    status = await client.get(
        f"/alerts/{first['alert_id']}",
        headers={"Authorization": f"Bearer {config.data_path('admin_token.txt').read_text().strip()}"},
    )
    assert status.status == 200
    record = await status.json()
    assert record["status"] == "success"
    assert record["legs"][0]["order_id"] == limit_id


async def test_cancel_order_cancels_resting_orders(make_client: ClientFactory, config: Config) -> None:
    client = await make_client(config)
    placed = await post(client, alert(leg(symbol="SBIN", orderType="LMT", price="500")))
    order_id = placed["results"][0]["order_id"]
    cancelled = await post(client, alert({"symbol": "SBIN", "exchange": "NSE"}, alert_type="cancel_order"))
    assert cancelled["status"] == "success"
    assert cancelled["results"][0]["message"] == f"cancelled 1 order(s): {order_id}"
    again = await post(client, alert({"symbol": "SBIN"}, alert_type="cancel_order"))
    assert again["results"][0]["message"] == "cancelled 0 order(s)"


async def test_state_survives_a_restart(make_client: ClientFactory, config: Config) -> None:
    """A limit placed before a restart is still there after it, and is cancelled by a later alert."""
    first = await make_client(config)
    placed = await post(first, alert(leg(symbol="ITC", orderType="LMT", price="400")))
    await first.close()
    second = await make_client(config)
    cancelled = await post(second, alert({"symbol": "ITC"}, alert_type="cancel_order"))
    assert cancelled["results"][0]["message"] == f"cancelled 1 order(s): {placed['results'][0]['order_id']}"


async def test_exit_all_closes_the_position(make_client: ClientFactory, config: Config) -> None:
    """Long 7 LT: an EXIT_ALL sent as "S 1" sells 7, and the response and the order log say S 7, not S 1."""
    client = await make_client(config)
    await post(client, alert(leg(symbol="LT", quantity="7", price="3000")))
    body = await post(
        client, alert(leg(symbol="LT", transactionType="S", quantity="1", price="3100", manage_position="EXIT_ALL"))
    )
    [result] = body["results"]
    assert (result["status"], result["transaction"], result["quantity"]) == ("success", "S", "7")
    assert "EXIT_ALL closes the long position of 7" in result["message"]
    paper: Any = client.app[BROKERS]["paper"]
    assert await paper.positions() == []
    with config.data_path("webhook_orders.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["transaction"], r["quantity"]) for r in rows] == [("B", "7"), ("S", "7")]


async def test_exit_all_buys_back_a_short_and_is_a_no_op_when_flat(make_client: ClientFactory, config: Config) -> None:
    """Short 3 LT: EXIT_ALL without a quantity buys 3; a second EXIT_ALL finds nothing, sends nothing and
    answers quantity 0 with the reason."""
    client = await make_client(config)
    await post(client, alert(leg(symbol="LT", transactionType="S", quantity="3", price="3000")))
    exit_leg = leg(symbol="LT", price="3100", manage_position="EXIT_ALL")
    del exit_leg["quantity"]
    body = await post(client, alert(exit_leg))
    assert [(r["transaction"], r["quantity"], r["status"]) for r in body["results"]] == [("B", "3", "success")]
    again = await post(client, alert({**exit_leg, "meta": {"interval": "1D"}}))
    [result] = again["results"]
    assert (result["quantity"], result["order_id"], result["status"]) == ("0", None, "success")
    assert result["message"] == "nothing to close: no open position in NSE LT (C); EXIT_ALL sent no order"
    paper: Any = client.app[BROKERS]["paper"]
    assert len(await paper.orders()) == 2


async def test_guide_example_with_price_zero_fills(make_client: ClientFactory, config: Config) -> None:
    """The guide's template sends price "0" for market orders: paper fills it and says the price is unknown."""
    client = await make_client(config)
    body = await post(client, alert(leg()))
    assert body["status"] == "success"
    assert body["results"][0]["order_state"] == "filled"
